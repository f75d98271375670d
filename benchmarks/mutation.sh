#!/usr/bin/env bash
# Mutation testing of the modules that make numbers (mutmut 3, `pip install -e ".[test]"`).
#
#   benchmarks/mutation.sh                 # every module below, one after another
#   benchmarks/mutation.sh roofline kvcache
#   JOBS=1 benchmarks/mutation.sh cost     # mutants run in parallel: JOBS (default 2)
#   benchmarks/mutation.sh --recheck cost  # the last run's survivors again, with today's tests and
#                                          # selection (the module's source must be unchanged)
#   FRESH=1 benchmarks/mutation.sh cost    # forget the last run's verdicts (by default a module's
#                                          # scratch copy is reused: only changed functions, mutants
#                                          # not yet run and the survivors are run again)
#
# Each module runs in its own scratch copy of this working tree (/tmp/momentsim-mutation/NAME,
# or $MUTATION_DIR/NAME) with mutmut told to mutate that module only and to run only the test
# files that exercise it (mutmut then runs, for each mutant, the tests that call the mutated
# function). A mutant is killed when a test fails or times out. The survivors judged equivalent
# (no input changes what the code computes) are listed, with the reason, in
# benchmarks/mutation-equivalent.md; the score in the README counts them apart.
# Prints one line per module: killed / total, survivors; `mutmut results` inside the scratch copy
# lists the survivors and `mutmut show NAME` shows one. CPU-heavy (minutes per module): not on CI.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="${MUTATION_DIR:-/tmp/momentsim-mutation}"
jobs="${JOBS:-2}"

# module name -> "source files|test files" (the tests that check its numbers)
declare -A MODULES=(
  [roofline]="hwmodels/roofline.py|tests/test_roofline.py tests/test_cost.py"
  [model]="simulator/moment/model.py|tests/test_model.py tests/test_families.py tests/test_presets.py tests/test_physical_limits.py tests/test_ops.py"
  [ops]="simulator/moment/ops.py|tests/test_ops.py tests/test_ops_families.py tests/test_ops_layers_by_hand.py tests/test_kernels.py tests/test_physical_limits.py tests/test_cost.py"
  [cost]="simulator/moment/cost.py|tests/test_cost.py tests/test_kernels.py tests/test_physical_limits.py tests/test_launch.py tests/test_launch_by_hand.py tests/test_stacks.py tests/test_speculative.py tests/test_attention_by_hand.py"
  [kvcache]="simulator/serving/kvcache.py|tests/test_physical_limits.py tests/test_reference.py"
  [decodeset]="simulator/serving/decodeset.py|tests/test_reference.py tests/test_engine.py tests/test_schedulers.py tests/test_speculative.py"
  # the policies the reference scheduler runs (the serving designs' own schedulers, disaggregated,
  # offload, priority, speculative, have their own tests and are not mutated here)
  [schedulers]="simulator/serving/schedulers/base.py simulator/serving/schedulers/static.py simulator/serving/schedulers/continuous.py simulator/serving/schedulers/chunked.py simulator/serving/schedulers/prefill_first.py|tests/test_schedulers.py tests/test_reference.py tests/test_engine.py tests/test_combinations.py tests/test_priority.py tests/test_disaggregated.py tests/test_offload.py tests/test_metrics.py tests/test_speculative.py"
  [engine]="simulator/serving/engine.py|tests/test_engine.py tests/test_reference.py tests/test_run_cli.py tests/test_schedulers.py tests/test_priority.py tests/test_clients.py tests/test_disaggregated.py tests/test_speculative.py tests/test_stacks.py tests/test_power.py tests/test_offload.py tests/test_faults.py tests/test_combinations.py"
  [result]="simulator/serving/result.py|tests/test_engine.py tests/test_metrics.py tests/test_reference.py tests/test_priority.py tests/test_clients.py tests/test_disaggregated.py tests/test_offload.py tests/test_power.py tests/test_speculative.py"
  # every file that checks the summary's numbers: by hand first (fast), then from runs (classes,
  # pools, energy, overload, the gaps between tokens against the reference scheduler)
  [metrics]="simulator/reports/metrics.py|tests/test_metrics_by_hand.py tests/test_metrics.py tests/test_overload.py tests/test_disaggregated.py tests/test_priority.py tests/test_power.py tests/test_reference.py"
)
ORDER=(roofline model ops cost kvcache decodeset schedulers engine result metrics)

# "a","b": those of the test files $1 that exist under the folder $2, as a TOML list's items
quoted_tests() {
  local q=() t
  for t in $1; do [ -f "$2/$t" ] && q+=("\"$t\""); done
  (IFS=,; echo "${q[*]}")
}

# the working tree as it is (tracked and new files, not ignored ones), as a tar stream
tree() { (cd "$here" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -); }

recheck=0
if [ "${1:-}" = "--recheck" ]; then  # survivors of the last run again, with today's tests
  recheck=1
  shift
fi
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")

for name in "${names[@]}"; do
  spec="${MODULES[$name]:-}"
  if [ -z "$spec" ]; then
    echo "mutation.sh: unknown module '$name'; known: ${ORDER[*]}" >&2
    exit 2
  fi
  src="${spec%%|*}"
  tests="${spec#*|}"
  dir="$scratch/$name"
  if [ "$recheck" = 1 ]; then
    # the module's source must be as it was for that run; only the tests are copied again
    (
      cd "$dir"
      unset PYTHONPATH
      cp -r "$here/tests/." tests/ && cp -r "$here/tests/." mutants/tests/
      # today's selection, and the map of which test calls which function made again (new tests)
      sel="$(quoted_tests "$tests" .)"
      sed -i "s|^pytest_add_cli_args_test_selection = .*|pytest_add_cli_args_test_selection = [$sel]|" pyproject.toml
      rm -f mutants/mutmut-stats.json
      survivors=$(mutmut results 2>/dev/null | awk '$2 == "survived" || $2 == "no" {sub(":$", "", $1); print $1}')
      # shellcheck disable=SC2086
      [ -z "$survivors" ] || mutmut run --max-children "$jobs" $survivors >> mutmut-run.log 2>&1 || true
      mutmut export-cicd-stats > /dev/null 2>&1 || true
      echo "$name (recheck): $(mutmut results 2>/dev/null | grep -c ': survived') survivors"
    )
    continue
  fi
  if [ -d "$dir/mutants" ] && [ "${FRESH:-0}" != 1 ]; then
    # incremental: a scratch copy from an earlier run keeps its verdicts; mutmut re-tests the
    # functions whose code changed and the mutants not yet run, and the survivors run again below
    # with today's tests. The copy inside mutants/ is refreshed too, but for the mutated files
    # (mutmut rewrites those itself), and the test map is rebuilt (rm mutmut-stats.json).
    tree | tar -xf - -C "$dir"
    excl=()
    for f in $src; do excl+=(--exclude="./$f" --exclude="$f"); done
    tree | tar -xf - -C "$dir/mutants" "${excl[@]}"
    # shellcheck disable=SC2086
    (cd "$dir" && touch $src)  # newer than the mutants: mutmut compares each function's hash
    rm -f "$dir/mutants/mutmut-stats.json"
  else
    rm -rf "$dir"
    mkdir -p "$dir"
    tree | tar -xf - -C "$dir"
  fi
  sel="$(quoted_tests "$tests" "$dir")"
  srcs=()
  for f in $src; do srcs+=("\"$f\""); done
  only="$(IFS=,; echo "${srcs[*]}")"
  cat >> "$dir/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["hwmodels", "simulator", "calibration"]
also_copy = ["scenarios", "benchmarks", "docs", "README.md"]
only_mutate = [$only]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
pytest_add_cli_args_test_selection = [$sel]
EOF
  (
    cd "$dir"
    unset PYTHONPATH  # the mutated copy (mutants/) must be what the tests import
    mutmut run --max-children "$jobs" > mutmut-run.log 2>&1 || true
    # survivors and "no tests" once more (the test map is this run's): a verdict kept from an
    # earlier run (incremental) may predate the tests that reach the mutant now, and a mutant kept
    # as a survivor then survived twice
    survivors=$(mutmut results 2>/dev/null | awk '$2 == "survived" || $2 == "no" {sub(":$", "", $1); print $1}')
    if [ -n "$survivors" ]; then
      # shellcheck disable=SC2086
      mutmut run --max-children "$jobs" $survivors >> mutmut-run.log 2>&1 || true
    fi
    mutmut export-cicd-stats > /dev/null 2>&1 || true
    python3 - "$name" "$src" <<'PY'
import json, sys
s = json.load(open("mutants/mutmut-cicd-stats.json"))
killed = s["killed"] + s.get("timeout", 0) + s.get("caught_by_type_check", 0)
total = s["total"] - s.get("skipped", 0)
src = sys.argv[2].split()
label = src[0] if len(src) == 1 else f"{src[0].rsplit('/', 1)[0]}/ ({len(src)} files)"
print(f"{sys.argv[1]:<11} {label:<36} killed {killed:>5} / {total:<5} "
      f"({100 * killed / max(total, 1):.1f} %)  survived {s['survived']}  no tests {s['no_tests']}  "
      f"suspicious {s.get('suspicious', 0)}")
PY
  )
done
