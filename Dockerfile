# One image for the operator and the agents: `vmshift operator ...` or `vmshift agent ...`.
#
# Build it with `make image` (`vmshift dev image`): that makes the Debian base image locally and puts
# every wheel into a build context of its own, so the build reaches no registry and no package index:
#   deps/  the runtime dependencies as wheels, requirements.txt pinning them, and pip's wheel (which
#          installs them and is not installed itself)
#   app/   vmshift's wheel
# BASE_IMAGE: any image whose `python3` is CPython 3.11 on glibc (the default is the bookworm rootfs
# that `vmshift dev image` imports; `--base-image python:3.11-slim` works where a registry is reachable).
ARG BASE_IMAGE=vmshift-base:bookworm

FROM ${BASE_IMAGE} AS deps
COPY deps /wheels/deps
# pip runs from its own wheel (`python pip-X.whl/pip`), so the runtime gets no pip. The kubernetes
# package ships an asyncio twin of its client (kubernetes/aio, 68 MB) that vmshift never imports.
# vmshift itself goes to /opt/vmshift-app (next stage), which a .pth file puts on the venv's path:
# a change to vmshift's code then rebuilds a layer of 3 MB, not the 110 MB of its dependencies.
RUN set -- /wheels/deps/pip-*.whl \
 && python3 -m venv --without-pip /opt/vmshift \
 && /opt/vmshift/bin/python "$1/pip" install --quiet --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /wheels/deps --requirement /wheels/deps/requirements.txt \
 && rm -rf /opt/vmshift/lib/python3.11/site-packages/kubernetes/aio \
 && echo /opt/vmshift-app > /opt/vmshift/lib/python3.11/site-packages/vmshift-app.pth

FROM deps AS app
COPY app /wheels/app
RUN set -- /wheels/deps/pip-*.whl \
 && /opt/vmshift/bin/python "$1/pip" install --quiet --no-index --no-cache-dir --disable-pip-version-check \
      --no-deps --no-compile --target /opt/vmshift-app /wheels/app/*.whl \
 && /opt/vmshift/bin/python -m compileall -q /opt/vmshift-app

# Runtime: the base, the virtualenv and vmshift, nothing else (no pip, no wheels, no compiler).
# Every .pyc is compiled at build time, so the root filesystem can be read-only; only /tmp needs to
# be writable.
# The user is numeric, so that Kubernetes' runAsNonRoot can check it, and has a passwd entry: Kopf
# asks getpass.getuser() for its identity (USER answers it for a pod run as some other uid).
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin vmshift
COPY --from=deps /opt/vmshift /opt/vmshift
COPY --from=app /opt/vmshift-app /opt/vmshift-app
ENV PATH=/opt/vmshift-app/bin:/opt/vmshift/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    USER=vmshift
USER 10001:10001
EXPOSE 8080 8081 8443 8444 9443
ENTRYPOINT ["vmshift"]
CMD ["operator"]
