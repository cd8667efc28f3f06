// Command control-plane runs a real Kubernetes control plane for Wireway's
// tests: etcd, kube-apiserver and kube-controller-manager, built from pinned
// Go modules and run in this one process, on 127.0.0.1 only. It is a test
// tool and is never shipped. See README.md.
//
//	control-plane --dir DIR [--port N] [--controllers LIST] [--v N] [--exit-on-stdin-close]
//	              [--apiserver-arg=--flag=value]... [--controller-manager-arg=--flag=value]...
//	control-plane compact --dir DIR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	logsapi "k8s.io/component-base/logs/api/v1"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"

	// As in kube-apiserver's own main: the client-go and version metrics.
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
)

// The controllers Wireway's tests rely on: namespace deletion, garbage
// collection by ownerReferences, ServiceAccounts and their tokens, the
// kube-root-ca.crt ConfigMap that projected token volumes carry, and
// ClusterRole aggregation. No workload controllers: the lab plays kubelet
// and creates what it needs itself.
const defaultControllers = "namespace-controller,garbage-collector-controller," +
	"serviceaccount-controller,serviceaccount-token-controller," +
	"root-ca-certificate-publisher-controller,clusterrole-aggregation-controller"

// issuer is the service-account token issuer and the apiserver's own
// audience, the values a kubeadm cluster has.
const issuer = "https://kubernetes.default.svc.cluster.local"

type args []string

func (a *args) String() string     { return strings.Join(*a, " ") }
func (a *args) Set(v string) error { *a = append(*a, v); return nil }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "compact" {
		os.Exit(runCompact(os.Args[2:]))
	}
	dir := flag.String("dir", "", "directory for certificates, kubeconfigs and etcd data (required)")
	port := flag.Int("port", 0, "apiserver secure port on 127.0.0.1 (0: a free one)")
	controllers := flag.String("controllers", defaultControllers, "kube-controller-manager --controllers")
	verbosity := flag.Int("v", 0, "log verbosity of the apiserver and controller-manager")
	readyTimeout := flag.Duration("ready-timeout", 3*time.Minute, "give up if not ready by then")
	stdinEOF := flag.Bool("exit-on-stdin-close", false, "stop as on SIGTERM when standard input closes (a test harness that dies, even by SIGKILL, closes it)")
	var apiArgs, kcmArgs args
	flag.Var(&apiArgs, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--watch-cache=false (repeatable)")
	flag.Var(&kcmArgs, "controller-manager-arg", "extra kube-controller-manager flag (repeatable)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "control-plane: --dir is required")
		os.Exit(2)
	}
	// Signals are ours, not the components': on SIGTERM the controller
	// manager must stop before the apiserver, and the apiserver before etcd.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if *stdinEOF {
		// A pipe closes when its writer's process ends however it ends,
		// unlike PR_SET_PDEATHSIG, which follows the parent's thread.
		go func() {
			io.Copy(io.Discard, os.Stdin)
			sig <- syscall.SIGTERM
		}()
	}
	if err := run(sig, *dir, *port, *controllers, *verbosity, *readyTimeout, apiArgs, kcmArgs); err != nil {
		fmt.Fprintln(os.Stderr, "control-plane:", err)
		os.Exit(1)
	}
}

func run(sig chan os.Signal, dir string, port int, controllers string, verbosity int, readyTimeout time.Duration, apiArgs, kcmArgs []string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// admin.kubeconfig appears only once the control plane is ready, so a
	// stale one from an earlier run must not be mistaken for that.
	adminKubeconfig := filepath.Join(dir, "admin.kubeconfig")
	os.Remove(adminKubeconfig)
	os.Remove(filepath.Join(dir, "etcd-url"))
	if err := ensurePKI(dir); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	etcd, etcdURL, err := startEtcd(dir)
	if err != nil {
		return err
	}
	defer etcd.Close()

	// The apiserver takes a ready listener, so the port cannot be lost to
	// another process between choosing it and binding it.
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("apiserver listener: %w", err)
	}
	server := "https://" + listener.Addr().String()
	p := func(name string) string { return filepath.Join(dir, name) }

	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	apiDone, err := startAPIServer(apiCtx, listener, append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--tls-cert-file=" + p("apiserver.crt"),
		"--tls-private-key-file=" + p("apiserver.key"),
		"--client-ca-file=" + p("ca.crt"),
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--service-account-issuer=" + issuer,
		"--api-audiences=" + issuer,
		"--authorization-mode=Node,RBAC",
		// The defaults (ServiceAccount among them) plus the one every real
		// cluster adds, which confines kubelets to their own Node and pods.
		"--enable-admission-plugins=NodeRestriction",
		// Wireway's agents run privileged with host networking.
		"--allow-privileged=true",
		"--service-cluster-ip-range=10.96.0.0/16",
		// The "kubernetes" Service's endpoints would be 127.0.0.1, which
		// Endpoints validation refuses; nothing in the tests dials it.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		fmt.Sprintf("--v=%d", verbosity),
	}, apiArgs...))
	if err != nil {
		return err
	}

	admin, err := clientFor(dir, "admin", server)
	if err != nil {
		return err
	}
	waitCtx, cancelWait := context.WithTimeout(context.Background(), readyTimeout)
	defer cancelWait()
	stop := func(err error) error {
		stopAPI()
		<-apiDone.done
		return err
	}
	if err := waitFor(waitCtx, sig, []*component{apiDone}, func(ctx context.Context) (bool, error) {
		code := 0
		admin.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		return code == 200, nil
	}); err != nil {
		return stop(fmt.Errorf("apiserver /readyz: %w", err))
	}

	kcmKubeconfig := p("controller-manager.kubeconfig")
	if err := writeKubeconfig(dir, "controller-manager", kcmKubeconfig, server); err != nil {
		return stop(err)
	}
	kcmCtx, stopKCM := context.WithCancel(context.Background())
	defer stopKCM()
	kcmDone, err := startControllerManager(kcmCtx, append([]string{
		"--kubeconfig=" + kcmKubeconfig,
		// No serving port: nothing scrapes it, and it would be one more port.
		"--secure-port=0",
		"--leader-elect=false",
		"--controllers=" + controllers,
		// Each controller acts as its own ServiceAccount, as in kubeadm, so
		// the bootstrap RBAC roles are what they run with.
		"--use-service-account-credentials=true",
		"--root-ca-file=" + p("ca.crt"),
		"--service-account-private-key-file=" + p("sa.key"),
	}, kcmArgs...))
	if err != nil {
		return stop(err)
	}
	stopAll := func(err error) error {
		stopKCM()
		select {
		case <-kcmDone.done:
		case <-time.After(30 * time.Second):
			fmt.Fprintln(os.Stderr, "control-plane: controller-manager did not stop in 30s")
		}
		return stop(err)
	}

	// Ready means usable by a test: the API answers, and the controllers
	// have run far enough to give the default namespace its ServiceAccount
	// (which pods and `kubectl create token default` need).
	if err := waitFor(waitCtx, sig, []*component{apiDone, kcmDone}, func(ctx context.Context) (bool, error) {
		_, err := admin.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return stopAll(fmt.Errorf("waiting for the default ServiceAccount: %w", err))
	}
	if err := writeKubeconfig(dir, "admin", adminKubeconfig, server); err != nil {
		return stopAll(err)
	}
	fmt.Printf("ready %s\n", adminKubeconfig)

	select {
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "control-plane: %v, stopping\n", s)
		// A second signal means "now": exit without the orderly shutdown.
		go func() { <-sig; os.Exit(1) }()
		return stopAll(nil)
	case <-apiDone.done:
		return stopAll(fmt.Errorf("apiserver stopped: %v", apiDone.err))
	case <-kcmDone.done:
		return stopAll(fmt.Errorf("controller-manager stopped: %v", kcmDone.err))
	}
}

// startAPIServer does what kube-apiserver's command does, minus its signal
// handling: parse the flags, complete and validate, and run until ctx ends.
func startAPIServer(ctx context.Context, listener net.Listener, flags []string) (*component, error) {
	s := apiserveroptions.NewServerRunOptions()
	if err := parse("kube-apiserver", s.Flags().FlagSets, flags); err != nil {
		return nil, err
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	// Logging is global to the process: configured once, here, for both.
	if err := logsapi.ValidateAndApply(s.Logs, utilfeature.DefaultFeatureGate); err != nil {
		return nil, err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, errors.Join(errs...)
	}
	return goRun("apiserver", func() error { return apiserver.Run(ctx, completed) }), nil
}

// startControllerManager does what kube-controller-manager's command does,
// minus logging setup (done once, by the apiserver) and signal handling.
func startControllerManager(ctx context.Context, flags []string) (*component, error) {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	all, disabled, aliases := kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	s.ParsedFlags = &named
	if err := parse("kube-controller-manager", named.FlagSets, flags); err != nil {
		return nil, err
	}
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	c, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return nil, err
	}
	return goRun("controller-manager", func() error { return kcm.Run(ctx, c.Complete()) }), nil
}

func parse(name string, sets map[string]*pflag.FlagSet, flags []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	for _, set := range sets {
		fs.AddFlagSet(set)
	}
	if err := fs.Parse(flags); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func clientFor(dir, name, server string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags(server, "")
	if err != nil {
		return nil, err
	}
	cfg.TLSClientConfig.CAFile = filepath.Join(dir, "ca.crt")
	cfg.TLSClientConfig.CertFile = filepath.Join(dir, name+".crt")
	cfg.TLSClientConfig.KeyFile = filepath.Join(dir, name+".key")
	return kubernetes.NewForConfig(cfg)
}

// component is one of the servers running in a goroutine of this process.
type component struct {
	name string
	done chan struct{} // closed when it has returned
	err  error         // what it returned; read after done
}

func goRun(name string, run func() error) *component {
	c := &component{name: name, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = run()
	}()
	return c
}

// waitFor polls cond until it holds, failing early on a signal or when a
// component has already stopped.
func waitFor(ctx context.Context, sig <-chan os.Signal, components []*component, cond wait.ConditionWithContextFunc) error {
	var reason error
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case s := <-sig:
			reason = fmt.Errorf("interrupted by %v", s)
			return false, reason
		default:
		}
		for _, c := range components {
			select {
			case <-c.done:
				reason = fmt.Errorf("%s stopped: %v", c.name, c.err)
				return false, reason
			default:
			}
		}
		ok, err := cond(ctx)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return ok, err
	})
	if reason != nil {
		return reason
	}
	return err
}
