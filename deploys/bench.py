"""Benchmark every serving container of the inventory and print one fleet table.

    pyinfra INV deploys/bench.py [--data bench_num_prompts=200 --data bench_output_len=128]

Results: reports/bench/<run>/<host>__<container>.json and reports/bench/<run>.json.
"""

from tasks.bench import bench_fleet

bench_fleet()
