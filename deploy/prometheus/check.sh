#!/usr/bin/env bash
# Checks the alerting rules with Prometheus' own tool: `promtool check rules` (syntax, PromQL,
# templates) and `promtool test rules` (rules.test.yml: each alert fires on the series it is
# for, and the no-leader alert also when no sf-bridge is scraped at all). Needs promtool
# (Debian: apt-get install prometheus). tests/tests/monitoring.rs runs it when promtool is there.
set -euo pipefail
cd "$(dirname "$0")"
promtool check rules rules.yml
promtool test rules rules.test.yml
