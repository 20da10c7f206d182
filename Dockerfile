# Image for the vidrec API and ranking workers (docker-compose.yml runs both).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /srv/vidrec
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
COPY indexing ./indexing
COPY ranking ./ranking
COPY mappings ./mappings
RUN pip install --no-cache-dir --no-deps -e .
RUN useradd --system --home-dir /srv/vidrec vidrec
USER vidrec
EXPOSE 8000
CMD ["vidrec", "serve", "--host", "0.0.0.0", "--port", "8000"]
