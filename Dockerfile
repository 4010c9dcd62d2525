FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ./ledger
COPY api ./api
COPY cli ./cli
RUN pip install --no-cache-dir .
ENV RXLEDGER_HOME=/data
VOLUME ["/data"]
EXPOSE 8000
CMD ["sh", "-c", "rxledger init --origin \"${RXLEDGER_ORIGIN:-rxledger.local/log}\" && rxledger serve --host 0.0.0.0 --port 8000"]
