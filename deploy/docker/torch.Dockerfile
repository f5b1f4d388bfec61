# The layers every regen image shares, built once by build-images.sh:
#   --target python  ->  regen/python:VERSION  Python venv in /opt/venv, non-root user regen (10001)
#   (default)        ->  regen/torch:VERSION   the same plus CUDA torch and torchvision
# The build context is deploy/docker/wheels (torch and its dependencies, downloaded by
# build-images.sh from this machine's index): the wheels are copied into a build stage
# only, so they never land in a layer of any image; only the installed venv does.
ARG BASE_IMAGE=regen-base:bookworm

FROM ${BASE_IMAGE} AS python
RUN groupadd --gid 10001 regen \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/regen --shell /usr/sbin/nologin regen \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 LANG=C.UTF-8

FROM python AS install
ARG TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"
COPY . /wheels
RUN pip install --no-index --find-links /wheels ${TORCH_PACKAGES}

FROM python AS torch
COPY --from=install /opt/venv /opt/venv
