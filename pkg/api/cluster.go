package api

// Coordinator membership: `meshd cluster add`, `promote`, `transfer-leader`.

// CodeCatchingUp: a coordinator added as a non-voter has not caught up
// with the leader yet, so it cannot be promoted; retry once `meshd cluster
// status` shows its lag near zero.
const CodeCatchingUp = "catching_up"

// AddMemberRequest is the body of POST /v1/cluster/members: a coordinator
// to add to the Raft configuration. It starts empty with --join and
// catches up from the leader. Nonvoter adds it without a vote (the safe
// first step: `meshd cluster add` promotes it once it has caught up).
type AddMemberRequest struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	Nonvoter bool   `json:"nonvoter,omitempty"`
}

// PromoteRequest is the optional body of POST
// /v1/cluster/members/{name}/promote. Force promotes a non-voter whose
// progress the leader cannot check (its API does not answer).
type PromoteRequest struct {
	Force bool `json:"force,omitempty"`
}

// TransferLeaderRequest is the optional body of POST
// /v1/cluster/transfer-leader: the coordinator to hand leadership to;
// empty: the most up-to-date follower.
type TransferLeaderRequest struct {
	To string `json:"to,omitempty"`
}
