FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY adapters ./adapters
COPY risk ./risk
RUN pip install --no-cache-dir . && useradd --system --uid 10001 tradingd
COPY config.toml /etc/tradingd/config.toml
USER tradingd
ENTRYPOINT ["tradingd"]
CMD ["run", "--config", "/etc/tradingd/config.toml"]
