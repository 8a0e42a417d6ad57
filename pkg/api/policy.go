package api

import (
	"encoding/json"
	"time"
)

// Error codes of the policy calls.
const (
	// CodeInvalidPolicy: the policy is malformed or names what the vnet
	// does not have; the message names each rule and field at fault.
	CodeInvalidPolicy = "invalid_policy"
	// CodePolicyTestFailed: one of the policy's own tests does not hold.
	CodePolicyTestFailed = "policy_test_failed"
)

// MaxPolicyBytes caps a policy document (PUT /v1/vnets/{name}/policy).
const MaxPolicyBytes = 256 << 10

// PolicyVersion is one version in a vnet's policy history.
type PolicyVersion struct {
	Version int       `json:"version"`
	SetBy   string    `json:"set_by"`
	SetAt   time.Time `json:"set_at"`
	// Deleted: this version removed the policy.
	Deleted bool `json:"deleted,omitempty"`
}

// Policy is a vnet's access policy as `meshd policy get` shows it.
type Policy struct {
	VNet string `json:"vnet"`
	// Version is the latest version (0: the vnet never had a policy);
	// SetBy and SetAt say who wrote it and when.
	Version int       `json:"version"`
	SetBy   string    `json:"set_by,omitempty"`
	SetAt   time.Time `json:"set_at,omitzero"`
	// Policy is the document in force (of Version, or of the version
	// asked for); null when there is none: every peer of the vnet may
	// reach every other.
	Policy json.RawMessage `json:"policy"`
	// History lists the versions kept, newest first.
	History []PolicyVersion `json:"history"`
	// Skipped is what this coordinator could not read in the stored
	// policy (written by a newer version) and so does not apply.
	Skipped []string `json:"skipped,omitempty"`
}

// PolicyTestResult answers GET /v1/vnets/{name}/policy/test: would the
// vnet's policy accept a new flow from Src to Dst?
type PolicyTestResult struct {
	VNet    string `json:"vnet"`
	Version int    `json:"version"` // of the policy that answered; 0: none
	Src     string `json:"src"`
	Dst     string `json:"dst"`
	Proto   string `json:"proto"`
	Allowed bool   `json:"allowed"`
	// Rule is the index in "acls" of the first rule that accepts the
	// flow, and RuleName its name; absent when none does, or when the
	// vnet has no policy (NoPolicy), which allows everything.
	Rule     *int   `json:"rule,omitempty"`
	RuleName string `json:"rule_name,omitempty"`
	NoPolicy bool   `json:"no_policy,omitempty"`
}
