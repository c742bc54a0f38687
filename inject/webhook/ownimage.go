package webhook

import (
	"context"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ControlPlaneContainer is the name of the control plane's container in the
// shipped Deployment (deploy/kubernetes/40-control-plane.yaml): OwnImage
// takes its image when the pod has more than one container.
const ControlPlaneContainer = "control-plane"

// OwnImage reads the control plane's own pod, namespace/name, from the API
// server and returns the image its container runs: the pod's only container,
// or the one named ControlPlaneContainer. That image, whatever set it
// (kustomize's images, kubectl set image, a Helm value), carries the detour
// binaries the injected detour-init and detour-validate containers run.
func OwnImage(ctx context.Context, c kubernetes.Interface, namespace, name string) (string, error) {
	pod, err := c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read the control plane's own pod %s/%s (for the image of the injected detour containers): %w", namespace, name, err)
	}
	cs := pod.Spec.Containers
	if len(cs) == 1 && cs[0].Image != "" {
		return cs[0].Image, nil
	}
	var names []string
	for _, ct := range cs {
		if ct.Name == ControlPlaneContainer && ct.Image != "" {
			return ct.Image, nil
		}
		names = append(names, ct.Name)
	}
	return "", fmt.Errorf("the control plane's own pod %s/%s has no container named %s to take the detour image from (containers: %s); set injection.detourImage in the mesh config",
		namespace, name, ControlPlaneContainer, strings.Join(names, ", "))
}
