package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/inject/webhook"
	"github.com/detour-mesh/detour/internal/meshconfig"
)

// injectOptions are the flags of `detour-cp inject`.
type injectOptions struct {
	filename   string
	namespace  string
	meshConfig string
	sidecar    string
	uninject   bool
}

func newInjectCmd(s streams) *cobra.Command {
	o := &injectOptions{}
	cmd := &cobra.Command{
		Use:   "inject -f FILE|-",
		Short: "Add the detour sidecar to the workloads of Kubernetes manifests (or remove it: --uninject)",
		Long: `inject prints the manifests of -f with the sidecar added to the pod template of
every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
Job, CronJob and PodTemplate — the mutation the control plane's admission webhook
makes (docs/injection.md). It reads multi-document YAML, JSON and Lists; other
kinds pass through. Like the webhook, it leaves alone templates opted out
(detour.io/inject: disabled), on the host network or already injected, and
workloads of kube-system and detour-system (a workload's metadata.namespace, else
-n), so running it twice changes nothing. --uninject removes exactly what was
injected.

  detour inject -f deploy.yaml | kubectl apply -f -
  kubectl get deploy web -o yaml | detour inject -f - --uninject`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// An empty --mesh-config or --sidecar (a script's unset variable)
			// would silently mean the built-in defaults: proxy uid 5678
			// instead of the cluster's mesh config.
			// An empty --namespace would hide kube-system: refused too.
			for _, name := range []string{"mesh-config", "sidecar", "namespace"} {
				if fl := cmd.Flags().Lookup(name); fl.Changed && fl.Value.String() == "" {
					return usageError("--%s: an empty value is refused (leave the flag out for its default)", name)
				}
			}
			return runInject(o, s)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.filename, "filename", "f", "", `manifest file ("-" for stdin); required`)
	f.StringVarP(&o.namespace, "namespace", "n", "", "the namespace of workloads whose metadata names none, where kubectl apply -n puts them (kube-system and detour-system are left alone); default: not known, injected")
	f.StringVar(&o.meshConfig, "mesh-config", "", "mesh config document (the detour-config ConfigMap's config.yaml); default: the built-in defaults")
	f.StringVar(&o.sidecar, "sidecar", "", "native or classic (default: the mesh config's; auto means native)")
	f.BoolVar(&o.uninject, "uninject", false, "remove the injected sidecar instead")
	return cmd
}

func runInject(o *injectOptions, s streams) error {
	if o.filename == "" {
		return usageError("-f/--filename is required (- for stdin)")
	}
	switch meshconfig.Sidecar(o.sidecar) {
	case "", meshconfig.SidecarNative, meshconfig.SidecarClassic, meshconfig.SidecarAuto:
	default:
		return usageError("--sidecar %q is not native or classic", o.sidecar)
	}
	if o.uninject && (o.meshConfig != "" || o.sidecar != "" || o.namespace != "") {
		return usageError("--uninject removes what the status annotation records; --mesh-config, --sidecar and --namespace do not apply")
	}
	if errs := validation.IsDNS1123Label(o.namespace); o.namespace != "" && len(errs) > 0 {
		return usageError("--namespace %q is not a namespace name: %s", o.namespace, strings.Join(errs, "; "))
	}
	var in []byte
	var err error
	if o.filename == "-" {
		in, err = io.ReadAll(s.in)
	} else {
		in, err = os.ReadFile(o.filename)
	}
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("read manifests: %w", err))
	}
	var out bytes.Buffer
	if o.uninject {
		if err := inject.UninjectManifests(bytes.NewReader(in), &out); err != nil {
			return withCode(exitUsage, err)
		}
	} else {
		mesh := meshconfig.Default()
		if o.meshConfig != "" {
			if mesh, err = meshconfig.Load(o.meshConfig); err != nil {
				return withCode(exitUsage, err)
			}
		}
		injector, err := inject.New(inject.Options{Mesh: mesh, Sidecar: meshconfig.Sidecar(o.sidecar), Bootstrap: webhook.Bootstrap})
		if err != nil {
			return withCode(exitUsage, err)
		}
		if err := injector.Manifests(bytes.NewReader(in), &out, o.namespace); err != nil {
			return withCode(exitUsage, err)
		}
	}
	_, err = s.out.Write(out.Bytes())
	return err
}
