#!/usr/bin/env bash
# Time the README's commands as a new user meets them: each from a fresh clone of this checkout, one after another
# (time nothing while another job runs on the machine), each line of OUT a JSON record.
#
#   scripts/time_commands.sh DIR OUT.jsonl [start|test|sizes|all]
#     start: make setup, make smoke, make run, the GMM claims study (one fresh clone in DIR)
#     test:  make test (its own fresh clone in DIR-test: the set-up included), then make test-fast there
#     sizes: the .venv's size in DIR, and its NVIDIA libraries' (start measures them after the set-up)
#   python -m imgcollapse.recorded record-times first_hour OUT.jsonl     # then: python -m imgcollapse.recorded write
set -u
dest=${1:?usage: scripts/time_commands.sh DIR OUT.jsonl [start|test|all]}
out=$(realpath -m "${2:?the JSON-lines file to append to}")
what=${3:-all}
repo=$(git rev-parse --show-toplevel)

timed() {  # NAME COMMAND...: run it, append {"name", "command", "seconds", "rc", "date"} to OUT
    local name=$1; shift
    local start end rc
    start=$(date +%s.%N)
    "$@" > "$out.$name.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    python3 -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "command": sys.argv[2],
        "seconds": round(float(sys.argv[4]) - float(sys.argv[3]), 1), "rc": int(sys.argv[5]), "date": sys.argv[6]}))' \
        "$name" "$*" "$start" "$end" "$rc" "$(date -Iseconds)" >> "$out"
    echo "$name: rc $rc ($out.$name.log)"
}

sizes() {  # what the set-up downloaded: the .venv, and torch's NVIDIA libraries in it (sizes in bytes)
    local name path
    for entry in "venv.bytes .venv" "nvidia.bytes .venv/lib/python3*/site-packages/nvidia"; do
        read -r name path <<< "$entry"
        # shellcheck disable=SC2086  # the glob is meant
        python3 -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "value": int(sys.argv[2])}))' \
            "$name" "$(du -sbc $path 2>/dev/null | tail -1 | cut -f1)" >> "$out"
    done
}

if [ "$what" = start ] || [ "$what" = all ]; then
    rm -rf "$dest" && git clone -q "$repo" "$dest" && cd "$dest" || exit 1
    timed setup make setup
    sizes
    timed smoke make smoke
    timed run make run
    timed study .venv/bin/imgcollapse-study study=claims model=gmm
fi
if [ "$what" = sizes ]; then
    cd "$dest" && sizes
fi
if [ "$what" = test ] || [ "$what" = all ]; then
    rm -rf "$dest-test" && git clone -q "$repo" "$dest-test" && cd "$dest-test" || exit 1
    timed test make test
    timed test_fast make test-fast   # the fast tier, once make test has set up the same clone
fi
