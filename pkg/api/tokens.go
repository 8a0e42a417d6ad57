package api

// CodeAlreadyRevoked: the token (or credential) named is revoked already;
// nothing changed. HTTP 409.
const CodeAlreadyRevoked = "already_revoked"

// PruneTokensResponse answers POST /v1/tokens/prune: the join tokens
// removed, as token list showed them just before.
type PruneTokensResponse struct {
	Pruned []Token `json:"pruned"`
}
