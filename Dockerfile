FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY linkcoach_stream ./linkcoach_stream
COPY migrations ./migrations
COPY knowledge_base ./knowledge_base
COPY models ./models
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["linkcoach", "serve", "--host", "0.0.0.0", "--port", "8000"]
