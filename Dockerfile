FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN python -m pip install --no-cache-dir --upgrade "pip>=25.1" \
    && python -m pip install --no-cache-dir ".[web]" --group examples
