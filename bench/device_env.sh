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
