package coordinator

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/hashicorp/raft"

	"github.com/meshd/meshd/pkg/api"
)

// storageErrnos are the errors a disk gives when it cannot take a write:
// full, over quota, read-only or failing.
var storageErrnos = []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EIO}

// storageErrText matches the same errors when a store below raft flattened
// them into text (fmt.Errorf without %w).
var storageErrText = []string{"no space left on device", "disk quota exceeded", "read-only file system", "input/output error"}

// isStorageError reports whether err says the disk could not take a write.
func isStorageError(err error) bool {
	if err == nil {
		return false
	}
	for _, e := range storageErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	msg := strings.ToLower(err.Error())
	for _, s := range storageErrText {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// applyError turns the error of a raft apply on the leader into the API
// error a client sees. A log write that failed on the leader's own disk was
// not made: raft answers the write with the store's error before sending
// the entry to anyone, and the leader steps down so that a node with a
// working disk takes over. A command raft could not queue in time was never
// handed to it. Anything else after the command was handed to raft
// (leadership lost before it committed, raft shutting down) leaves its
// outcome unknown.
func applyError(node string, err error) *api.Error {
	switch {
	case isStorageError(err):
		return api.Errorf(api.CodeStorageFailed, "coordinator %s could not write its raft log (%v): the write was not made; free space in its data dir or replace its disk, and retry (another coordinator takes over meanwhile)", node, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return api.Errorf(api.CodeUnavailable, "coordinator %s is too busy to take the write (%v): nothing was changed, it is safe to retry", node, err)
	}
	return outcomeUnknown(node, fmt.Sprintf("the write was handed to raft but %v", err))
}
