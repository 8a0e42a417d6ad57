# The image of every container of the docker-compose lab: the static meshd
# binary plus a static busybox (sh, ip, ping, wget, httpd) and the lab's
# entry scripts. Built by `make lab-docker` from the repository root, which
# first puts bin/meshd (CGO_ENABLED=0) and bin/busybox in place.
FROM scratch
COPY bin/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /tmp /var/run/wireguard /state /data /tokens /secrets && chmod 1777 /tmp
COPY bin/meshd /bin/meshd
COPY deploy/docker/lab-*.sh /bin/
ENV PATH=/bin
