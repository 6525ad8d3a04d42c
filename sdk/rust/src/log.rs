//! Logging into the host's run log (tagged by the host with run id and
//! connector).

use crate::bindings::sluice::connector::log as wit;
use crate::bindings::sluice::connector::types::Level;

pub fn trace(message: &str) {
    wit::log(Level::Trace, message);
}
pub fn debug(message: &str) {
    wit::log(Level::Debug, message);
}
pub fn info(message: &str) {
    wit::log(Level::Info, message);
}
pub fn warn(message: &str) {
    wit::log(Level::Warn, message);
}
pub fn error(message: &str) {
    wit::log(Level::Error, message);
}
