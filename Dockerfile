# syntax=docker/dockerfile:1
# Training image for mmclip-dist: Ray head/worker pods (KubeRay), the MLflow server and the
# bucket-creation Job all run it. Build from the repository root:
#   docker build -t <registry>/mmclip-dist:0.1.0 .
# Every Python package is pinned (a test checks the pins against pyproject.toml's ranges) so the
# image is reproducible and its Ray matches the client that submits to it (`mmclip-dist submit`).

# Ray's CUDA 12.8 image: Python 3.11, Ray 2.60.0, wget for KubeRay's probes, user `ray` (uid 1000).
# The Ray version here must equal the ray pin below.
FROM rayproject/ray:2.60.0-py311-cu128

# DeepSpeed ops are JIT-compiled on first use instead of at install time (no nvcc needed to
# build the image); the training configs use ops that need no compilation.
ENV DS_BUILD_OPS=0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0

# WORKDIR is created root-owned; pip builds the package in place, so hand it to the ray user.
USER 0
WORKDIR /app
RUN chown 1000:100 /app
# Never run as root from here on: uid 1000 is the base image's `ray` user (pods set runAsUser 1000).
USER 1000

# Dependencies first, in their own layer: code edits then rebuild in seconds.
# torch/torchvision from PyPI ship their CUDA 12 runtime libraries.
RUN pip install \
      "torch==2.14.1" \
      "torchvision==0.29.1" \
      "deepspeed==0.19.8" \
      "ray[train,default]==2.60.0" \
      "timm==1.0.31" \
      "transformers==5.24.0" \
      "tokenizers==0.23.3" \
      "webdataset==1.0.2" \
      "pydicom==3.0.2" \
      "pylibjpeg==2.1.0" \
      "pylibjpeg-openjpeg==2.6.0" \
      "pylibjpeg-libjpeg==2.5.0" \
      "pylibjpeg-rle==2.2.0" \
      "imagecodecs==2026.3.6" \
      "pillow==13.0.0" \
      "numpy==2.4.6" \
      "boto3==1.44.8" \
      "mlflow[auth]==3.17.2" \
      "scikit-learn==1.9.1" \
      "threadpoolctl==3.8.0" \
      "pydantic==2.14.4" \
      "pyyaml==6.0.4" \
      "rich==15.0.0" \
      "tqdm==4.70.1" \
      "matplotlib==3.11.2" \
      "presidio-analyzer==2.2.366"

# The package (no dependency resolution: everything is pinned above) plus the preset configs,
# which RayJob entrypoints name by absolute path (/app/launch/configs/...).
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 mmclip_dist ./mmclip_dist
COPY --chown=1000:100 launch ./launch
RUN pip install --no-deps .
