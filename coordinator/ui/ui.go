// Package ui is the coordinators' web dashboard: plain HTML, CSS and
// JavaScript embedded in the binary and served under /ui/. The page signs
// in with an admin credential (a read-only one is enough), keeps it in the
// tab's sessionStorage, and reads the same JSON API the admin CLI does,
// sending the credential as the CLI does ("Authorization: Bearer ..."),
// never in a URL. It follows changes with a long poll (GET /v1/changes).
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Prefix is where the dashboard is served.
const Prefix = "/ui/"

// CSP is the Content-Security-Policy of every dashboard response: only
// the dashboard's own script, style and API; no inline script or style,
// no third-party assets, no framing, no form posts, no plugins.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the dashboard's files under Prefix (index.html for the
// folder itself) with the security headers every response carries.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix(strings.TrimSuffix(Prefix, "/"), http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		// The files change with the binary: a browser revalidates each
		// time (cheap, and an upgraded coordinator serves its own page).
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
