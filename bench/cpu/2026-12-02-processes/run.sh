# 2026-12-02, this project's 2-core CPU machine (x86_64, 24 GiB), each command alone on the machine.
python tools/real_models.py --out real/smollm2-135m-instruct
python bench/bench_processes.py --setup tiny --rounds 3 --json bench/cpu/2026-12-02-processes/tiny.json
python bench/bench_processes.py --setup real --rounds 3 --json bench/cpu/2026-12-02-processes/smollm2.json
