#!/usr/bin/env bash
# Encrypted env files with age (Debian package `age`): env/<env>.secrets.env.age is committed, encrypted to the
# public keys in env/recipients/<env>.txt; the clear text env/<env>.secrets.env is git-ignored and made only on the
# machine that runs the stack, just before docker compose reads it (`env_file:` in docker-compose.yml).
#
#   scripts/secrets.sh init    dev          a laptop's first start: random dev secrets (mail to mailpit), keygen, encrypt
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
# decrypt, load, init (and so run and up) also write env/ENV.secrets/<role>.env: per role of env/secrets.roles only
# its keys, so that each container receives only the secrets it needs (docker-compose.yml: env_file).
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

wipe_roles() {  # the per-role clear files of one environment
    [ -d "$1" ] || return 0
    local f
    for f in "$1"/*.env "$1"/.[!.]*; do wipe "$f"; done
    rmdir "$1" 2>/dev/null || true
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

roles_file() { echo "$ENV_DIR/secrets.roles"; }
roles_dir()  { echo "$ENV_DIR/$1.secrets"; }

split_roles() {  # split_roles ENV: env/ENV.secrets.env -> env/ENV.secrets/<role>.env (mode 600), one per role
    local env="$1" src dir role keys k tmp
    src="$(clear_file "$env")"; dir="$(roles_dir "$env")"
    [ -f "$(roles_file)" ] || die "$(roles_file): not found"
    (umask 077 && mkdir -p "$dir")
    chmod 700 "$dir"
    while IFS=: read -r role keys; do
        role="${role// /}"
        [[ -z "$role" || "$role" == \#* ]] && continue
        [[ "$role" =~ ^[a-z][a-z0-9-]*$ ]] || die "$(roles_file): bad role name '$role'"
        tmp="$(umask 077 && mktemp "$dir/.$role.XXXXXX")"
        for k in $keys; do
            grep -E "^$k=" "$src" >> "$tmp" || { rm -f "$tmp"; die "$src: no $k (role $role)"; }
        done
        chmod 600 "$tmp"
        mv -f "$tmp" "$dir/$role.env"
    done < "$(roles_file)"
}

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
fernet_key() { head -c 32 /dev/urandom | base64 | tr '+/' '-_'; }
DEV_SMTP='smtp://mailpit:1025?disable_ssl=true&disable_tls=true&from_email=enrich-dev%40localhost'

cmd_init() {  # cmd_init ENV [--force]: throwaway secrets for a laptop, from env/secrets.env.example
    local env="$1" force="${2:-}" clear example line name out
    [ "$env" = dev ] || die "init makes throwaway secrets for dev only; for $env use: scripts/secrets.sh edit $env"
    clear="$(clear_file "$env")"; example="$ENV_DIR/secrets.env.example"
    if [ "$force" != --force ]; then
        [ ! -e "$(enc_file "$env")" ] || die "$(enc_file "$env") exists: scripts/secrets.sh decrypt $env (or init $env --force to replace it)"
        [ ! -e "$clear" ] || die "$clear exists (init $env --force to replace it)"
    fi
    declare -A values=()
    for name in $(grep -oE '<[^>]+>' "$example" | sort -u | tr -d '<>'); do
        case "$name" in
            fernet-key) values[$name]="$(fernet_key)" ;;
            *) values[$name]="$(random_hex 24)" ;;
        esac
    done
    out="$(umask 077 && mktemp "$ENV_DIR/.$env.secrets.XXXXXX")"
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ "$line" == AIRFLOW_CONN_SMTP_DEFAULT=* ]]; then
            line="AIRFLOW_CONN_SMTP_DEFAULT=$DEV_SMTP"
        else
            for name in "${!values[@]}"; do line="${line//"<$name>"/"${values[$name]}"}"; done
        fi
        printf '%s\n' "$line"
    done < "$example" > "$out"
    chmod 600 "$out"
    mv -f "$out" "$clear"
    check_file "$env" "$clear"
    split_roles "$env"
    echo "wrote $clear (random values, mail to mailpit) and $(roles_dir "$env")/" >&2
    if command -v age >/dev/null && command -v age-keygen >/dev/null; then
        cmd_keygen "$env" >/dev/null
        encrypt_from "$env" "$clear"
    else
        echo "age is not installed: $clear is not encrypted (apt-get install age, then scripts/secrets.sh keygen $env && scripts/secrets.sh encrypt $env)" >&2
    fi
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
    split_roles "$env"
    echo "$dest"
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        init)    check_env_name "${1:-}"; cmd_init "$@" ;;
        keygen)  need_age; check_env_name "${1:-}"; cmd_keygen "$1" ;;
        encrypt) need_age; check_env_name "${1:-}"; encrypt_from "$1" "$(clear_file "$1")" ;;
        decrypt) need_age; check_env_name "${1:-}"; decrypt_to "$1" "$(clear_file "$1")"; split_roles "$1"; clear_file "$1" ;;
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
            if [ $# -gt 0 ]; then check_env_name "$1"; wipe "$(clear_file "$1")"; wipe_roles "$(roles_dir "$1")"
            else
                for f in "$ENV_DIR"/*.secrets.env; do wipe "$f"; done
                for d in "$ENV_DIR"/*.secrets; do wipe_roles "$d"; done
            fi ;;
        -h|--help|help|"") sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (try: scripts/secrets.sh help)" ;;
    esac
}

main "$@"
