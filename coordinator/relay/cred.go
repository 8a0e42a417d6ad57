package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // TURN REST credentials are HMAC-SHA1 by definition
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// ErrUsername is returned by ParseUsername for a username that is not a
// relay credential's.
var ErrUsername = errors.New("not a relay username of the form EXPIRY_UNIX:PEER_ID")

// Credential returns peerID's TURN REST credential good until expires: the
// username is "EXPIRY_UNIX:PEER_ID" and the password
// base64(HMAC-SHA1(secret, username)), the form coturn's use-auth-secret
// (with static-auth-secret) checks.
func Credential(secret []byte, peerID string, expires time.Time) (username, password string) {
	username = strconv.FormatInt(expires.Unix(), 10) + ":" + peerID
	return username, Password(secret, username)
}

// Password is the TURN REST password of username under secret.
func Password(secret []byte, username string) string {
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// ParseUsername splits a relay username into the credential's expiry and the
// peer it was made for.
func ParseUsername(username string) (expires time.Time, peerID string, err error) {
	exp, id, ok := strings.Cut(username, ":")
	if !ok || id == "" {
		return time.Time{}, "", ErrUsername
	}
	n, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, "", ErrUsername
	}
	return time.Unix(n, 0), id, nil
}
