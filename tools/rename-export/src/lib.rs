//! Rename top-level exports of a WebAssembly component, copying every other
//! byte as it is.
//!
//! Why: componentize-py links the guest against libc, and a world export
//! named `read` (ours) collides with libc's `read` symbol when it links
//! ("duplicate items" in wit-component's linker). So the Python route builds
//! against a copy of the world whose export is `read-records` and renames
//! the component's export back to `read` with this tool. Names are only
//! names: no index or type changes, and the result is validated.

use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// The component section id of the export section.
const EXPORT_SECTION_ID: u8 = 11;

#[derive(Debug, thiserror::Error)]
pub enum RenameError {
    #[error("not a valid component: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    #[error("the component has no top-level export named {0:?}")]
    Missing(String),
    #[error("export {0:?} has a name form this tool does not rewrite")]
    Unsupported(String),
    #[error("the renamed component does not validate: {0}")]
    Invalid(wasmparser::BinaryReaderError),
}

fn leb128(mut n: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn leb128_len(n: u32) -> usize {
    let mut v = Vec::new();
    leb128(n, &mut v);
    v.len()
}

/// `component` with each top-level export named `from` renamed to `to`,
/// for every `(from, to)` in `renames`.
pub fn rename_exports(
    component: &[u8],
    renames: &[(String, String)],
) -> Result<Vec<u8>, RenameError> {
    let mut out = wasm_encoder::Component::new();
    let mut found = vec![false; renames.len()];
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload?;
        if depth == 0 {
            if let Payload::ComponentExportSection(reader) = &payload {
                let range = reader.range();
                let mut content = Vec::with_capacity(range.len());
                leb128(reader.count(), &mut content);
                let entries: Vec<(usize, wasmparser::ComponentExport)> = reader
                    .clone()
                    .into_iter_with_offsets()
                    .collect::<Result<_, _>>()?;
                for (i, (offset, export)) in entries.iter().enumerate() {
                    let end = entries.get(i + 1).map_or(range.end, |(o, _)| *o);
                    let name = export.name.name;
                    // exportname' = discriminant byte (0x00, or 0x01 in older
                    // binaries), length, name bytes; other forms carry options.
                    if !matches!(component[*offset], 0x00 | 0x01) {
                        return Err(RenameError::Unsupported(name.to_string()));
                    }
                    let rest = offset + 1 + leb128_len(name.len() as u32) + name.len();
                    let new_name = match renames.iter().position(|(f, _)| f == name) {
                        Some(k) => {
                            found[k] = true;
                            renames[k].1.as_str()
                        }
                        None => name,
                    };
                    content.push(component[*offset]);
                    leb128(new_name.len() as u32, &mut content);
                    content.extend_from_slice(new_name.as_bytes());
                    content.extend_from_slice(&component[rest..end]);
                }
                out.section(&wasm_encoder::RawSection {
                    id: EXPORT_SECTION_ID,
                    data: &content,
                });
            } else if let Some((id, range)) = payload.as_section() {
                out.section(&wasm_encoder::RawSection {
                    id,
                    data: &component[range],
                });
            }
        }
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth == 0 => break,
            Payload::End(_) => depth -= 1,
            _ => {}
        }
    }
    if let Some(k) = found.iter().position(|f| !f) {
        return Err(RenameError::Missing(renames[k].0.clone()));
    }
    let bytes = out.finish();
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(&bytes)
        .map_err(RenameError::Invalid)?;
    Ok(bytes)
}
