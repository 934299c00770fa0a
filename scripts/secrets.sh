#!/usr/bin/env bash
# Encrypted env files with age (Debian package `age`): env/<env>.secrets.env.age is committed, encrypted to the
# public keys in env/recipients/<env>.txt; the clear text env/<env>.secrets.env is git-ignored and made only on the
# machine that runs the stack, just before docker compose reads it (`env_file:` in docker-compose.yml).
#
#   scripts/secrets.sh keygen  ENV          make your age key for ENV (if missing) and add its public key to the recipients
#   scripts/secrets.sh encrypt ENV          env/ENV.secrets.env -> env/ENV.secrets.env.age (checked first)
#   scripts/secrets.sh decrypt ENV          env/ENV.secrets.env.age -> env/ENV.secrets.env (mode 600)
#   scripts/secrets.sh edit    ENV          decrypt to a private temp file, $EDITOR, check, re-encrypt, wipe the temp
#   scripts/secrets.sh rekey   ENV          re-encrypt to the current recipients (after adding or removing a person)
#   scripts/secrets.sh check   ENV          every key of env/secrets.env.example present, no <placeholder> left
#   scripts/secrets.sh load    ENV          load-at-start: decrypt + check, print the clear file's path
#   scripts/secrets.sh run     ENV -- CMD   load-at-start, then run CMD with ENRICH_ENV=ENV
#   scripts/secrets.sh up      ENV [ARGS]   load-at-start, then docker compose --env-file env/ENV.env --profile P up -d --wait
#   scripts/secrets.sh clean   [ENV]        wipe the clear-text files
#
# The private key is read from ENRICH_AGE_KEY_FILE (default ~/.config/enrich/age/ENV.key); it never enters the repo.
# ENRICH_ENV_DIR (default: env/ beside this script) is where the files above live.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${ENRICH_ENV_DIR:-$ROOT/env}"

die() { echo "secrets.sh: $*" >&2; exit 1; }

need_age() {
    if ! command -v age >/dev/null || ! command -v age-keygen >/dev/null; then
        die "age is not installed (Debian/Ubuntu: apt-get install age)"
    fi
}

check_env_name() {
    [[ "${1:-}" =~ ^[a-z][a-z0-9-]*$ ]] || die "environment name expected (dev, stage, prod), got '${1:-}'"
}

key_file()   { echo "${ENRICH_AGE_KEY_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/enrich/age/$1.key}"; }
clear_file() { echo "$ENV_DIR/$1.secrets.env"; }
enc_file()   { echo "$ENV_DIR/$1.secrets.env.age"; }
recipients() { echo "$ENV_DIR/recipients/$1.txt"; }
profile_of() { if [ "$1" = dev ]; then echo dev; else echo prod; fi; }

wipe() {  # remove a clear-text file, overwriting it first where shred exists
    [ -e "$1" ] || return 0
    if command -v shred >/dev/null; then shred -u -- "$1"; else rm -f -- "$1"; fi
}

TMP_CLEAR=""  # the private temp file of edit/rekey, wiped on exit whatever happens
private_tmp() {  # a temp file only we can read, in RAM when /dev/shm exists
    local dir="${TMPDIR:-/tmp}"
    [ -d /dev/shm ] && [ -w /dev/shm ] && dir=/dev/shm
    TMP_CLEAR="$(umask 077 && mktemp "$dir/enrich-secrets.XXXXXX")"
    trap 'wipe "$TMP_CLEAR"' EXIT
    trap 'exit 130' INT TERM
}

# KEY=VALUE lines of a file, comments and blanks skipped.
keys_of() { grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$1" | cut -d= -f1 | sort -u; }

check_file() {  # check_file ENV FILE: the decrypted secrets are complete and filled in
    local env="$1" file="$2" example="$ENV_DIR/secrets.env.example" bad=0 k
    [ -f "$file" ] || die "$file: not found"
    local n
    n=$(grep -nvE '^[[:space:]]*(#.*)?$|^[A-Za-z_][A-Za-z0-9_]*=' "$file" | head -3 || true)
    [ -z "$n" ] || { echo "secrets.sh: $file: not KEY=VALUE lines:" >&2; echo "$n" >&2; bad=1; }
    if [ -f "$example" ]; then
        for k in $(keys_of "$example"); do
            grep -qE "^$k=." "$file" || { echo "secrets.sh: $file: missing $k" >&2; bad=1; }
        done
    fi
    local left
    left=$(grep -E '^[A-Za-z_][A-Za-z0-9_]*=.*<[^>]+>' "$file" | cut -d= -f1 || true)
    if [ -n "$left" ]; then
        echo "secrets.sh: $file: placeholders left in: ${left//$'\n'/ }" >&2; bad=1
    fi
    local settings="$ENV_DIR/$env.env"
    if [ -f "$settings" ] && ! grep -qx "ENRICH_ENV=$env" "$settings"; then
        echo "secrets.sh: $settings does not say ENRICH_ENV=$env" >&2; bad=1
    fi
    [ $bad -eq 0 ] || die "$file: not usable for '$env' (see above)"
}

encrypt_from() {  # encrypt_from ENV CLEARFILE: write the .age atomically
    local env="$1" src="$2" rec out
    rec="$(recipients "$env")"; out="$(enc_file "$env")"
    [ -s "$rec" ] || die "$rec: no recipients; run: scripts/secrets.sh keygen $env"
    check_file "$env" "$src"
    age --encrypt --armor -R "$rec" -o "$out.tmp" "$src"
    mv -f "$out.tmp" "$out"
    echo "encrypted $(basename "$out") for $(grep -cE '^age1' "$rec") recipient(s)" >&2
}

decrypt_to() {  # decrypt_to ENV DEST
    local env="$1" dest="$2" key src
    key="$(key_file "$env")"; src="$(enc_file "$env")"
    [ -f "$src" ] || die "$src: not found (make it with: scripts/secrets.sh edit $env)"
    [ -f "$key" ] || die "$key: no private key for '$env' (set ENRICH_AGE_KEY_FILE, or ask a holder to add you)"
    (umask 077 && age --decrypt -i "$key" -o "$dest.tmp" "$src") || { rm -f "$dest.tmp"; die "cannot decrypt $src"; }
    chmod 600 "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
}

cmd_keygen() {
    local env="$1" key rec pub
    key="$(key_file "$env")"; rec="$(recipients "$env")"
    if [ ! -f "$key" ]; then
        mkdir -p "$(dirname "$key")"
        (umask 077 && age-keygen -o "$key" 2>/dev/null)
        echo "new private key: $key (back it up; never commit it)" >&2
    fi
    pub="$(age-keygen -y "$key")"
    mkdir -p "$(dirname "$rec")"
    if ! grep -qxF "$pub" "$rec" 2>/dev/null; then
        { echo "# $(id -un)@$(hostname) $(date +%Y-%m-%d)"; echo "$pub"; } >> "$rec"
        echo "added $pub to $rec: commit it, then have a current holder run: scripts/secrets.sh rekey $env" >&2
    fi
    echo "$pub"
}

cmd_edit() {
    local env="$1" editor
    private_tmp
    if [ -f "$(enc_file "$env")" ]; then
        decrypt_to "$env" "$TMP_CLEAR"
    else
        cp "$ENV_DIR/secrets.env.example" "$TMP_CLEAR"
    fi
    read -ra editor <<< "${VISUAL:-${EDITOR:-vi}}"  # EDITOR may carry arguments ("code --wait")
    "${editor[@]}" "$TMP_CLEAR"
    encrypt_from "$env" "$TMP_CLEAR"
}

cmd_load() {
    local env="$1" dest
    dest="$(clear_file "$env")"
    decrypt_to "$env" "$dest"
    check_file "$env" "$dest"
    echo "$dest"
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        keygen)  need_age; check_env_name "${1:-}"; cmd_keygen "$1" ;;
        encrypt) need_age; check_env_name "${1:-}"; encrypt_from "$1" "$(clear_file "$1")" ;;
        decrypt) need_age; check_env_name "${1:-}"; decrypt_to "$1" "$(clear_file "$1")"; clear_file "$1" ;;
        edit)    need_age; check_env_name "${1:-}"; cmd_edit "$1" ;;
        rekey)
            need_age; check_env_name "${1:-}"
            private_tmp
            decrypt_to "$1" "$TMP_CLEAR"; encrypt_from "$1" "$TMP_CLEAR" ;;
        check)   check_env_name "${1:-}"; check_file "$1" "$(clear_file "$1")"; echo "ok" ;;
        load)    need_age; check_env_name "${1:-}"; cmd_load "$1" ;;
        run)
            need_age; check_env_name "${1:-}"
            local env="$1"; shift
            [ "${1:-}" = "--" ] && shift
            [ $# -gt 0 ] || die "run $env -- COMMAND..."
            cmd_load "$env" >/dev/null
            ENRICH_ENV="$env" exec "$@" ;;
        up)
            need_age; check_env_name "${1:-}"
            local env="$1"; shift
            cmd_load "$env" >/dev/null
            cd "$ROOT"
            ENRICH_ENV="$env" exec docker compose --env-file "$ENV_DIR/$env.env" --profile "$(profile_of "$env")" \
                up -d --wait "$@" ;;
        clean)
            if [ $# -gt 0 ]; then check_env_name "$1"; wipe "$(clear_file "$1")"
            else for f in "$ENV_DIR"/*.secrets.env; do wipe "$f"; done; fi ;;
        -h|--help|help|"") sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (try: scripts/secrets.sh help)" ;;
    esac
}

main "$@"
