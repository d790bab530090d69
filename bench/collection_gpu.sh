#!/usr/bin/env bash
# Issue 15 on one GPU: bench/collection_qa.py (page store, text-chunk RAG and RetroLM over the concatenation on the
# same questions) at 64 and 1,000 documents, the default model on CUDA. Each size has a time limit (seconds, under
# the device's 600 s per call); the script writes its files after each method, so a size stopped at its limit keeps
# the methods it finished.
#   bash bench/collection_gpu.sh            # QUESTIONS (default 20), LIMIT_64 (default 120), LIMIT_1000 (default 400)
#   FACTS=one bash bench/collection_gpu.sh  # only the asked document holds a fact (collection_qa.py --facts one)
#   FACTS=one DOCS=1000 QUESTIONS=50 LIMIT_1000=530 bash bench/collection_gpu.sh  # one size, more questions
#   TEXT=reference ...  # documents of Python's language reference, held out of the default model's training
#   SCORER=attention ...  # the training-free scorer for store and concat (collection_qa.py --scorer)
#   METHODS="store concat" ...  # a subset of store, rag and concat (default all three)
# $OUT gets collection_qa_64.{json,md} and collection_qa_1000.{json,md} (_one with FACTS=one). Needs no faiss: on a
# GPU both indexes are exact search in torch (retrolm/index.py).
set -uo pipefail
source bench/device_env.sh
for docs in ${DOCS:-64 1000}; do
    limit_name=LIMIT_$docs
    timeout "${!limit_name:-$([ "$docs" = 64 ] && echo 120 || echo 400)}" python3 bench/collection_qa.py \
        --docs "$docs" --questions "${QUESTIONS:-20}" --facts "${FACTS:-every}" --text "${TEXT:-essay}" \
        --scorer "${SCORER:-trained}" --methods ${METHODS:-store rag concat} --device cuda \
        --out "$OUT" 2>&1 \
        | tr '\r' '\n' | grep -vE "doc/s]$|s/doc]$" | tail -8
done
