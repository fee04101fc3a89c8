#!/usr/bin/env bash
# Demo of the whole loop on one machine: Orthanc as the PACS, dicomnode as the inference node.
#
#   deploy/demo.sh [SERIES_DIR]        (default: ../shared/data/sunnybrook/SCD0000301)
#
# Starts Orthanc (deploy/orthanc/orthanc.json, copied to a temporary directory with the ports below)
# and `dicomnode serve` (data in the same temporary directory, a demo radiologist account), sends the
# series to Orthanc with DCMTK storescu, lets Orthanc forward it to the node, waits for the result and
# prints the measurements, the worklist URL and the demo login. Ctrl-C stops everything it started and
# removes the temporary directory. Needs: the venv from README's install command, DCMTK and Orthanc
# (apt-get install dcmtk orthanc). Ports can be changed through the environment variables below.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERIES_DIR="${1:-$REPO/../shared/data/sunnybrook/SCD0000301}"
ORTHANC_HTTP_PORT="${ORTHANC_HTTP_PORT:-8042}"
ORTHANC_DICOM_PORT="${ORTHANC_DICOM_PORT:-4242}"
NODE_DICOM_PORT="${NODE_DICOM_PORT:-11112}"
NODE_WEB_PORT="${NODE_WEB_PORT:-8080}"
RESULT_TIMEOUT_S="${RESULT_TIMEOUT_S:-300}"
DEMO_USER="demo"
DEMO_PASSWORD="dicomnode-demo-password"
STORESCU=/usr/bin/storescu   # DCMTK's, not the one pynetdicom installs on PATH

die() { echo "demo: $*" >&2; exit 1; }

[ -d "$SERIES_DIR" ] || die "no series directory $SERIES_DIR"
[ -x "$STORESCU" ] || die "DCMTK storescu not found (apt-get install dcmtk)"
ORTHANC="$(command -v Orthanc || true)"
[ -n "$ORTHANC" ] || { [ -x /usr/sbin/Orthanc ] && ORTHANC=/usr/sbin/Orthanc; } || die "Orthanc not found (apt-get install orthanc)"
if ! command -v dicomnode >/dev/null; then
    [ -f "$REPO/.venv/bin/activate" ] || die "dicomnode not installed: run README's install command"
    # shellcheck disable=SC1091
    . "$REPO/.venv/bin/activate"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$ORTHANC_HTTP_PORT" "$ORTHANC_DICOM_PORT" "$NODE_DICOM_PORT" "$NODE_WEB_PORT"; do
    if port_busy "$port"; then die "port $port is in use (set the *_PORT variables)"; fi
done

WORK="$(mktemp -d -t dicomnode-demo.XXXXXX)"
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "demo: stopping"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait until COMMAND succeeds, or fail after SECONDS.
wait_until() {
    local seconds="$1" what="$2"; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${seconds} s waiting for $what"
        sleep 0.5
    done
}

# -- Orthanc: the deploy template with this demo's ports and storage ------------------------------
mkdir -p "$WORK/orthanc/storage" "$WORK/node"
python - "$REPO/deploy/orthanc" "$WORK/orthanc" <<PY
import json, sys
from pathlib import Path
deploy, work = Path(sys.argv[1]), Path(sys.argv[2])
text = (deploy / "orthanc.json").read_text()
config = json.loads("\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//")))
config.update({
    "HttpPort": $ORTHANC_HTTP_PORT, "DicomPort": $ORTHANC_DICOM_PORT,
    "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "storage"),
    "RemoteAccessAllowed": False, "AuthenticationEnabled": False,  # loopback only
    "LuaScripts": [str(deploy / "autoforward.lua")],
})
config["DicomModalities"]["dicomnode"].update({"Host": "127.0.0.1", "Port": $NODE_DICOM_PORT})
(work / "orthanc.json").write_text(json.dumps(config, indent=2))
PY
"$ORTHANC" "$WORK/orthanc/orthanc.json" >"$WORK/orthanc/orthanc.log" 2>&1 &
PIDS+=("$!")

# -- the node -----------------------------------------------------------------------------------
export DICOMNODE_DICOM__HOST=127.0.0.1
export DICOMNODE_DICOM__PORT="$NODE_DICOM_PORT"
export DICOMNODE_WEB__PORT="$NODE_WEB_PORT"
export DICOMNODE_STORAGE__DATA_DIR="$WORK/node/data"
export DICOMNODE_PIPELINE__STABLE_SECONDS=5
export DICOMNODE_DELIVERY__DESTINATIONS="[{\"ae_title\": \"ORTHANC\", \"host\": \"127.0.0.1\", \"port\": $ORTHANC_DICOM_PORT}]"
echo "$DEMO_PASSWORD" | dicomnode users add "$DEMO_USER" --role radiologist --full-name "Demo^Radiologist" \
    --organization "Demo Hospital" --password-stdin >/dev/null
dicomnode serve >"$WORK/node/node.log" 2>&1 &
PIDS+=("$!")

wait_until 60 "Orthanc" port_busy "$ORTHANC_DICOM_PORT"
wait_until 60 "Orthanc's REST API" port_busy "$ORTHANC_HTTP_PORT"
wait_until 60 "dicomnode serve" port_busy "$NODE_DICOM_PORT"
echo "demo: Orthanc (PACS) on DICOM port $ORTHANC_DICOM_PORT, dicomnode on DICOM port $NODE_DICOM_PORT"

# -- send the study to the PACS; Orthanc forwards it to the node ----------------------------------
shopt -s nullglob
files=("$SERIES_DIR"/*.dcm)
[ "${#files[@]}" -gt 0 ] || die "no .dcm files in $SERIES_DIR"
echo "demo: sending ${#files[@]} instances from $SERIES_DIR to Orthanc"
TCP_NODELAY=1 "$STORESCU" -aet DEMO_MR -aec ORTHANC 127.0.0.1 "$ORTHANC_DICOM_PORT" "${files[@]}"

measured() {
    dicomnode worklist list --json 2>/dev/null \
        | python -c 'import json, sys; rows = json.load(sys.stdin); sys.exit(0 if any(r["edv_ml"] is not None for r in rows) else 1)'
}
echo "demo: waiting for the node's result (up to ${RESULT_TIMEOUT_S} s)"
wait_until "$RESULT_TIMEOUT_S" "the node's result" measured
dicomnode worklist list --json | python -c "$(cat <<'PY'
import json, sys
for row in json.load(sys.stdin):
    print(f"  result {row['result_id']}: EDV {row['edv_ml']} mL, ESV {row['esv_ml']} mL, "
          f"EF {row['ef_pct']} %, status {row['status']}")
    print(f"  QC flags: {', '.join(row['qc_flags']) or 'none'}; confidence {row['confidence']}")
    print(f"  deliveries: {row['deliveries']}")
PY
)"
cat <<MSG

demo: worklist   http://127.0.0.1:$NODE_WEB_PORT/worklist   (login: $DEMO_USER / $DEMO_PASSWORD)
demo: PACS       http://127.0.0.1:$ORTHANC_HTTP_PORT/app/explorer.html   (draft SR and picture are in the study;
                 sign off in the worklist and the VERIFIED SR arrives there too)
demo: logs       $WORK/node/node.log, $WORK/orthanc/orthanc.log
demo: press Ctrl-C to stop everything
MSG
wait
