#!/usr/bin/env python3
"""Interleaved runs of kvrt-bench's sched suite for several builds.

usage: sched_compare.py ROUNDS NAME=KVRT_BENCH ... -- CONFIG ...

Each round runs every build on every configuration in turn
(KVRT_BENCH_SCHED=<config> kvrt-bench --suite sched --repeats 5 --json) and
reads the thread CPU time per sequence from the figure's note, so that
stretches of a loaded machine hit every build of a round alike; compare
ratios within a round. A build that lacks a configuration is skipped for
it. Prints medians (and minimums) per build and configuration, the median
(and range) of each later build's within-round ratio to the first, then
every figure as JSON on the last line.
"""
import json
import os
import re
import statistics
import subprocess
import sys


def main(argv):
    if '--' not in argv or len(argv) < 4:
        sys.exit(__doc__)
    rounds = int(argv[0])
    sep = argv.index('--')
    builds = [a.split('=', 1) for a in argv[1:sep]]
    configs = argv[sep + 1:]
    figures = {(name, c): [] for name, _ in builds for c in configs}
    for r in range(rounds):
        for c in configs:
            for name, binary in builds:
                env = dict(os.environ, KVRT_BENCH_SCHED=c)
                out = subprocess.run([binary, '--suite', 'sched', '--repeats', '5', '--json'],
                                     env=env, capture_output=True, text=True,
                                     timeout=600).stdout
                reports = json.loads(out) if out.strip() else []
                if not reports:  # this build lacks the configuration
                    continue
                m = re.search(r'thread CPU time ([0-9.]+)', reports[0]['note'])
                figures[(name, c)].append(float(m.group(1)))
        print(f'round {r + 1} done', file=sys.stderr, flush=True)
    print('config | ' + ' | '.join(f'{name} median (min)' for name, _ in builds))
    for c in configs:
        cells = []
        for name, _ in builds:
            v = figures[(name, c)]
            cells.append(f'{statistics.median(v):.1f} ({min(v):.1f})' if v else '-')
        print(c + ' | ' + ' | '.join(cells))
    # Within-round ratios: a stretch of a loaded machine slows every build
    # of a round, so these spread less than the figures themselves.
    base = builds[0][0]
    for name, _ in builds[1:]:
        print(f'{name} / {base}, median (range) of within-round ratios')
        for c in configs:
            ratios = [x / b for x, b in zip(figures[(name, c)], figures[(base, c)]) if b]
            if ratios:
                print(f'{c} | {statistics.median(ratios):.3f} '
                      f'({min(ratios):.2f}-{max(ratios):.2f})')
    print(json.dumps({f'{name}:{c}': v for (name, c), v in figures.items()}))


if __name__ == '__main__':
    main(sys.argv[1:])
