package cni

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"
)

// CNI error codes the plugin returns besides the spec's well-known ones
// (4 invalid environment, 6 decoding failure, 7 invalid network config,
// 11 try again later, 50 not available, 51 limited connectivity). Codes 100 and
// up are plugin-specific, as the spec allows; docs/cni.md lists them all.
const (
	// CodePodNotFound: the pod named in CNI_ARGS does not exist (or is another
	// pod with the same name: K8S_POD_UID differs). ADD fails closed.
	CodePodNotFound uint = 100
	// CodeInvalidAnnotation: a detour.io/ annotation or namespace label holds an
	// invalid value; the message names it and the value.
	CodeInvalidAnnotation uint = 101
	// CodeInstall: the redirection could not be installed, checked or removed
	// in the pod's network namespace.
	CodeInstall uint = 102
	// CodeDrift: CHECK found the installed rules differ from the plan.
	CodeDrift uint = 103
	// CodeAPIDenied: the Kubernetes API refused the plugin's credentials
	// (401/403); retrying will not help until RBAC or the kubeconfig is fixed.
	CodeAPIDenied uint = 104
)

// newError gives err a CNI code; the message is err's text. skel prints it as
// the JSON error on stdout.
func newError(code uint, err error) *types.Error {
	return &types.Error{Code: code, Msg: err.Error()}
}

// ErrorCode returns the CNI code carried by err, or 0.
func ErrorCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
