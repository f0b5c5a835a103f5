# fm-operator image: the operator only (no torch). Build from the repository root:
#   docker build -t ghcr.io/fm-operator/fm-operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Non-root, matching the chart's securityContext (runAsUser 65532, read-only root filesystem).
USER 65532:65532
EXPOSE 8080 8081 9090
ENTRYPOINT ["fm-operator"]
