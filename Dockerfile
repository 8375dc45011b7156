# ADViT Studio as a Hugging Face Docker Space: a non-root user with uid 1000, the app on port 7860.
FROM python:3.11-slim

RUN useradd --create-home --uid 1000 user
USER user
# Packages go to a virtualenv in the user's home: owned by the user, apart from the base image's Python.
ENV HOME=/home/user \
    VIRTUAL_ENV=/home/user/venv \
    PATH=/home/user/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 \
    ADVIT_DATA=cifar10
WORKDIR $HOME/app
RUN python -m venv $VIRTUAL_ENV

COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# The app, its example images and the checkpoint bundle (runs, caches and tests stay out: .dockerignore).
COPY --chown=user . .
RUN pip install --no-cache-dir --no-deps .

EXPOSE 7860
CMD ["python", "app.py"]
