# altlas orchestrator image (core: ONNX Runtime on CPU).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY consumers consumers
COPY producers producers
COPY pipelines pipelines
COPY orchestration orchestration
COPY models models
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 altlas
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER altlas
WORKDIR /home/altlas
ENV ALTLAS_LOG__FORMAT=json ALTLAS_LOG__LEVEL=INFO
ENTRYPOINT ["altlas"]
CMD ["run"]
