#!/bin/bash
# Two runs of the CPU benchmark on the same commit, each with a competing torch process beside it for part of
# the run: in run A at the start, in run B later (the probe's situation: load lands on different phases).
cd /work/main
LOAD='import torch, time; torch.set_num_threads(2); a = torch.randn(1500, 1500); t = time.time()
while time.time() - t < float(__import__("sys").argv[1]): a @ a'
(.venv/bin/python -c "$LOAD" 150 &)
.venv/bin/python bench/bench_detox.py --size tiny --steps 4 --rounds 3 --out /tmp/bench/a.json > /tmp/bench/a.log 2>&1
(sleep 120; .venv/bin/python -c "$LOAD" 200) &
.venv/bin/python bench/bench_detox.py --size tiny --steps 4 --rounds 3 --out /tmp/bench/b.json > /tmp/bench/b.log 2>&1
wait
echo done > /tmp/bench/done
