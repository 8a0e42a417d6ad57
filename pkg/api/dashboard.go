package api

// Changes answers GET /v1/changes (the dashboard's long poll): the
// coordinator's applied index, past the one the caller gave, or unchanged
// when the wait ran out first.
type Changes struct {
	Index uint64 `json:"index"`
}
