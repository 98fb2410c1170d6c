# The page on Hugging Face Spaces (Docker SDK): docs/deploy.md, "Hugging Face Spaces, step by step".
# `whatsthat deploy-check --target spaces` checks this file; tests/web/test_docker.py runs its RUN and CMD.

# The Python that trained the model (runtime.txt says the same to Heroku and Binder).
FROM python:3.11.7-slim

# Spaces runs the container as uid 1000: that user, with a home for Jupyter's runtime files.
RUN useradd --create-home --uid 1000 user
ENV HOME=/home/user

WORKDIR /app

# Only what `pip install -r requirements.txt` reads, so a new model does not reinstall torch.
COPY requirements.txt pyproject.toml README.md ./
COPY whatsthat whatsthat
COPY bin/post_compile bin/post_compile

# The serving environment exactly as a dyno installs it: requirements.txt pins every package, torch
# 2.13.0+cpu from the PyTorch CPU index it names (pip picks no version, never a CUDA build), and installs
# whatsthat itself ('.'); bin/post_compile then drops the torch files serving never uses, as on Heroku.
# As root: the app's user can read its code but not change it.
RUN pip install --no-cache-dir --root-user-action=ignore -r requirements.txt && bash bin/post_compile

# The notebook and the model (.dockerignore keeps venvs, datasets, caches, tests and export.pkl out).
COPY . .

USER user
EXPOSE 7860
# `whatsthat serve`, as the Procfile runs it, on all interfaces and the port Spaces expects (the Space
# card's app_port). Spaces' proxy sets X-Forwarded-For: trusting it makes the per-visitor kernel cap
# count visitors, not the proxy (its address is the same for everyone). The Space's page on
# huggingface.co shows the app in a frame, which Jupyter's default policy would leave empty.
CMD ["whatsthat", "serve", "--host=0.0.0.0", "--port=7860", "--model=export.pkl", "--notebook=app.ipynb", \
     "--trust-forwarded-for", "--frame-ancestors=https://huggingface.co"]
