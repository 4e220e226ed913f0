# 2026-12-02, this project's 2-core CPU machine (x86_64, 24 GiB), each command alone on the machine.
cat ../shared/data/rtp/toxic.jsonl ../shared/data/rtp/nontoxic.jsonl > /tmp/rtp-2396.jsonl && touch -d '1 hour ago' /tmp/rtp-2396.jsonl
python tools/real_models.py --out real/smollm2-135m-instruct
python bench/bench_noop_repro.py --hash /tmp/rtp-2396.jsonl real/smollm2-135m-instruct --json bench/cpu/2026-12-02-nothing-stale/hash.json
python bench/bench_noop_repro.py --setup tiny --before 2fec512 --repeats 5 --json bench/cpu/2026-12-02-nothing-stale/noop-tiny.json
python bench/bench_noop_repro.py --setup real --before 2fec512 --repeats 5 --json bench/cpu/2026-12-02-nothing-stale/noop-real.json
