#!/usr/bin/env bash
# Checks the alerting rules with Prometheus' own tool: `promtool check rules` (syntax, PromQL,
# templates) and `promtool test rules` (rules.test.yml: each alert fires on the series it is
# for, and the no-leader alert also when no sf-bridge is scraped at all). Needs promtool
# (on PATH, or PROMTOOL=<path>; scripts/ensure-promtool.sh provides one). tests/tests/monitoring.rs
# runs it, always under scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")"
"${PROMTOOL:-promtool}" check rules rules.yml
"${PROMTOOL:-promtool}" test rules rules.test.yml
