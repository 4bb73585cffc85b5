# wsipipe image: `docker run --rm -v /slides:/data wsipipe segment /data/slide.svs -o /data/out`
# The torch wheel pinned in constraints.txt is the CUDA build: run with `--gpus all` to use a GPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/wsipipe

COPY pyproject.toml constraints.txt README.md ./
COPY wsipipe ./wsipipe
RUN pip install -c constraints.txt . \
    && useradd --create-home --uid 1000 wsipipe

USER wsipipe
WORKDIR /data
ENTRYPOINT ["wsipipe"]
CMD ["--help"]
