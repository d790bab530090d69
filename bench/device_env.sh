# Sourced by the GPU scripts in bench/: $OUT (the device's returned folder, /tmp/out elsewhere) exists, the
# wheels carried in .whl/ (deepspeed, datasets, wonderwords, ...; carry: [".whl"]) are installed once into
# /tmp/site, and PYTHONPATH holds them and the repository.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    [ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl
    export PYTHONPATH=/tmp/site:$(pwd)
else
    export PYTHONPATH=$(pwd)
fi
# stage 1's page settings before 2026-12-02 (the committed config is at 64 now): scripts reproducing runs of that
# time pass it with --stage1-set
PAGE128_STAGE1='retrolm={"page_size":128,"top_k":5,"sink_pages":1,"local_pages":1}'
