#!/usr/bin/env bash
# Create or update the Prefect deployments of prefect.yaml (`scripts/team.sh deploy` runs this).
#   scripts/deploy.sh [--dir DIR] [prefect deploy options]   (default options: --all)
# Each deployment clones the commit deployed (HEAD) from GENDL_GIT_REPOSITORY: by default this
# checkout's `origin` remote, else the checkout itself (a path the workers must be able to read).
# The Prefect server is PREFECT_API_URL when set; with --dir, or when it is not set, the team stack's
# (scripts/team.sh env). Workers need GENDL_DVC_REMOTE and MLFLOW_TRACKING_URI, which
# scripts/team.sh start gives them.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

team_dir=""
deploy_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) team_dir="${2:?--dir needs a folder}"; shift 2 ;;
    --dir=*) team_dir="${1#--dir=}"; shift ;;
    *) deploy_args+=("$1"); shift ;;
  esac
done
[ ${#deploy_args[@]} -gt 0 ] || deploy_args=(--all)

fail() { echo "deploy.sh: error: $*" >&2; exit 1; }

if [ -n "$team_dir" ] || [ -z "${PREFECT_API_URL:-}" ]; then
  [ -x scripts/team.sh ] || fail "PREFECT_API_URL is not set and scripts/team.sh is missing"
  team_env="$(scripts/team.sh env ${team_dir:+--dir "$team_dir"})" \
    || fail "could not read the team stack's settings: start it first (scripts/team.sh start)"
  eval "$team_env"
fi
[ -n "${PREFECT_API_URL:-}" ] || fail "PREFECT_API_URL is not set: start the stack (scripts/team.sh start) or export it"

if [ -x .venv/bin/prefect ]; then prefect=(.venv/bin/prefect); else prefect=(prefect); fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"  # deploying imports the flows, hence TensorFlow

commit="$(git rev-parse HEAD)" || fail "$repo is not a git checkout with a commit"
if [ -z "${GENDL_GIT_REPOSITORY:-}" ]; then
  GENDL_GIT_REPOSITORY="$(git remote get-url origin 2>/dev/null || echo "$repo")"
fi
export GENDL_GIT_REPOSITORY GENDL_GIT_COMMIT="$commit"

# Workers clone $GENDL_GIT_REPOSITORY at this commit: it must be there, and only what is committed runs.
if [ "$GENDL_GIT_REPOSITORY" != "$repo" ] && git remote get-url origin >/dev/null 2>&1 \
  && [ "$GENDL_GIT_REPOSITORY" = "$(git remote get-url origin)" ]; then
  if git fetch --quiet origin 2>/dev/null; then
    [ -n "$(git branch -r --contains "$commit" 2>/dev/null)" ] \
      || fail "commit ${commit:0:12} is not on origin ($GENDL_GIT_REPOSITORY): push it first (git push), since workers clone it from there"
  else
    echo "deploy.sh: warning: could not fetch origin to check that ${commit:0:12} is pushed" >&2
  fi
fi
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "deploy.sh: warning: uncommitted changes are not deployed; the workers run commit ${commit:0:12}" >&2
fi

# The process work pool the deployments name (scripts/team.sh start creates it; a plain
# `prefect server start` does not).
if ! "${prefect[@]}" work-pool inspect gendl >/dev/null 2>&1; then
  "${prefect[@]}" work-pool create gendl --type process >/dev/null
fi

echo "deploying commit ${commit:0:12} of $GENDL_GIT_REPOSITORY to $PREFECT_API_URL"
"${prefect[@]}" --no-prompt deploy "${deploy_args[@]}"
