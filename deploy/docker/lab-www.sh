#!/bin/sh
# lab-www.sh: starts busybox httpd on port 8080 in the background; its
# /cgi-bin/ip answers with the address the request came from, which is how
# the lab shows true source IPs.
set -e
mkdir -p /tmp/www/cgi-bin
cat > /tmp/www/cgi-bin/ip <<'CGI'
#!/bin/sh
a=${REMOTE_ADDR#"[::ffff:"}
printf 'Content-Type: text/plain\r\n\r\n%s\n' "${a%"]"}"
CGI
chmod 755 /tmp/www/cgi-bin/ip
httpd -p 8080 -h /tmp/www
