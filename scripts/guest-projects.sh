# Sourced by the Python and JS guest build scripts: their shared command
# line. `guest_projects SUFFIX ENTRY HELP_LINES ARGS…` sets
#   out   the output directory (--out DIR; default connectors/target/components), absolute
#   dirs  the project directories given, else every connectors/*SUFFIX/ with ENTRY
# and `project_paths DIR ENTRY` sets name, snake (name with - as _) and wit
# (the project's wit/ if it has one, else the repository's wit/0.1.0/) for one project.
guest_projects() {
    local suffix="$1" entry="$2" help="$3"
    shift 3
    out=""
    dirs=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) out="$2"; shift 2 ;;
            -h|--help) sed -n "2,${help}p" "$0"; exit 0 ;;
            *) dirs+=("$1"); shift ;;
        esac
    done
    if [ ${#dirs[@]} -eq 0 ]; then
        for d in "$here"/connectors/*"$suffix"/; do
            [ -f "$d/$entry" ] && dirs+=("${d%/}")
        done
    fi
    [ -n "$out" ] || out="$here/connectors/target/components"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
}

project_paths() {
    local d="$1" entry="$2"
    [ -f "$d/$entry" ] || { echo "error: $d/$entry is missing" >&2; exit 1; }
    name="$(basename "$d")"
    snake="${name//-/_}"
    wit="$here/wit/0.1.0"
    [ -d "$d/wit" ] && wit="$d/wit"
    return 0
}
