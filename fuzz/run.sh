#!/bin/sh
# Run every fuzz target for FUZZ_SECS seconds, one after the other (one job), each from
# its corpus (fuzz/corpus/TARGET, grown by the runs) and its seeds (fuzz/seeds/TARGET,
# made by seed.sh when missing). Prints libFuzzer's final stats per target and fails if
# any target crashed (the input is left in fuzz/artifacts/TARGET).
# Usage: run.sh [TARGET...]   (default: every target of Cargo.toml)
set -u
cd "$(dirname "$0")"
SECS=${FUZZ_SECS:-60}
[ -d seeds ] || ./seed.sh
targets=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v -e '^understudy-fuzz$' -e '^seed$')}
export RUSTC_BOOTSTRAP=1
mkdir -p logs

failed=""
summary=""
for t in $targets; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t ($SECS s)"
    cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$SECS" -print_final_stats=1 -timeout=10 \
        >"logs/$t.log" 2>&1
    rc=$?
    done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED|pulse|NEW|REDUCE)' "logs/$t.log" | tail -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log")
    cov=$(echo "$done_line" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$done_line" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$done_line" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
    line=$(printf '%-15s %10s %8s %7s %7s %6s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    if [ $rc -ne 0 ]; then
        failed="$failed $t"
        line="$line  FAILED (see fuzz/logs/$t.log, fuzz/artifacts/$t)"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "logs/$t.log" | head -n 5
    fi
    echo "$line"
    summary="$summary$line
"
done
printf '\n%-15s %10s %8s %7s %7s %6s\n' target execs exec/s cov ft corpus
printf '%s' "$summary"
if [ -n "$failed" ]; then
    echo "fuzz: crashes in:$failed"
    exit 1
fi
