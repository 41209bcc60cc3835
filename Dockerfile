# One image for the operator and the agents (kind users): `vmshift operator` or `vmshift agent ...`.
FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home vmshift
WORKDIR /app
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY crds ./crds
RUN pip install --no-cache-dir . && rm -rf /root/.cache
USER 10001
ENTRYPOINT ["vmshift"]
CMD ["operator"]
