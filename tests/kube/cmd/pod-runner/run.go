package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	podutil "k8s.io/kubernetes/pkg/api/v1/pod"
)

// image is what the runner knows of a container image: there are no
// images here, so a test names, for the images its pods use, the file the
// image's ENTRYPOINT is and the local binary that stands for it, and the
// image's USER.
type image struct {
	entrypoint string // the image's ENTRYPOINT, a path inside the container
	binary     string // the local file bind-mounted there
	uid, gid   *int64 // the image's USER, if it sets one
}

// runner holds one pod and everything the runner made for it.
type runner struct {
	client     kubernetes.Interface
	pod        *v1.Pod
	state      string // the pod's directory: volumes/, containers/
	images     map[string]image
	tokens     *tokenManager
	containers map[string]*running
	exited     chan exit
	// only, when not empty, names the containers to run (see --only).
	only map[string]bool
}

// sync is how often the volumes are set up again (the kubelet does it at
// each pod sync, `--sync-frequency`, default 1 min, plus jitter: a token
// that is due is written at most a second late here instead of a minute).
const sync = time.Second

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of a user that may read the pod, its ConfigMaps and Secrets, and create service-account tokens")
	namespace := fs.String("namespace", "", "the pod's namespace")
	name := fs.String("pod", "", "the pod's name")
	state := fs.String("state", "", "a directory of the runner's own for the pod's volumes and containers")
	compressed := fs.Duration("compressed-token-life", 0, "DEVIATION from the kubelet, off by default: refresh each token at 80 % of this life instead of 80 % of its real one (the tokens stay real, with their real expiry)")
	only := fs.String("only", "", "run only these containers (comma-separated) and set up only the volumes they mount; the others are left out, as if they were not in the pod")
	var images imageFlags
	fs.Var(&images, "image", "NAME=entrypoint=PATH,binary=HOSTPATH[,user=UID:GID] (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kubeconfig == "" || *namespace == "" || *name == "" || *state == "" {
		return errors.New("run needs --kubeconfig, --namespace, --pod and --state")
	}
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	pod, err := client.CoreV1().Pods(*namespace).Get(ctx, *name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	r := &runner{
		client: client, pod: pod, state: *state, images: images,
		tokens:     newTokenManager(client, pod, *compressed),
		containers: map[string]*running{},
		exited:     make(chan exit, 16),
		only:       map[string]bool{},
	}
	for _, name := range strings.Split(*only, ",") {
		if name != "" {
			r.only[name] = true
		}
	}
	err = r.start(ctx)
	r.stopAll()
	return err
}

// start sets up the volumes, starts the containers in the kubelet's order
// and keeps the volumes up to date until ctx ends or a container fails.
func (r *runner) start(ctx context.Context) error {
	if err := r.setUpVolumes(ctx); err != nil {
		return err
	}
	if err := r.startContainers(ctx); err != nil {
		return err
	}
	ticker := time.NewTicker(sync)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-r.exited:
			return fmt.Errorf("container %s exited: %v (the runner restarts nothing)", e.name, e.err)
		case <-ticker.C:
			if err := r.setUpVolumes(ctx); err != nil {
				// The kubelet retries at its next sync; so do we.
				slog.Warn("volume set-up failed", "error", err.Error())
			}
		}
	}
}

// startContainers follows the kubelet's order (pkg/kubelet/kuberuntime/
// kuberuntime_manager.go, computePodActions, and kuberuntime_container.go):
// init containers one by one; an init container with `restartPolicy:
// Always` (a native sidecar) keeps running, and the next one starts once
// its startup probe has passed; any other init container must exit 0
// first; then every regular container.
func (r *runner) startContainers(ctx context.Context) error {
	for i := range r.pod.Spec.InitContainers {
		c := &r.pod.Spec.InitContainers[i]
		if !r.runs(c) {
			continue
		}
		rc, err := r.startContainer(c)
		if err != nil {
			return err
		}
		if !podutil.IsRestartableInitContainer(c) {
			if err := rc.wait(ctx); err != nil {
				return fmt.Errorf("init container %s: %w", c.Name, err)
			}
			continue
		}
		if err := r.probe(ctx, rc, c.StartupProbe); err != nil {
			return fmt.Errorf("startup probe of %s: %w", c.Name, err)
		}
	}
	for i := range r.pod.Spec.Containers {
		if !r.runs(&r.pod.Spec.Containers[i]) {
			continue
		}
		if _, err := r.startContainer(&r.pod.Spec.Containers[i]); err != nil {
			return err
		}
	}
	slog.Info("pod running", "pod", r.pod.Name)
	return nil
}

// runs says whether the runner runs c (all containers, unless --only).
func (r *runner) runs(c *v1.Container) bool {
	return len(r.only) == 0 || r.only[c.Name]
}

// mounted says whether a container the runner runs mounts volume name.
func (r *runner) mounted(name string) bool {
	for _, list := range [][]v1.Container{r.pod.Spec.InitContainers, r.pod.Spec.Containers} {
		for i := range list {
			for _, m := range list[i].VolumeMounts {
				if m.Name == name && r.runs(&list[i]) {
					return true
				}
			}
		}
	}
	return false
}

// stopAll stops regular containers, then init sidecars in reverse order, as
// the kubelet does (KEP-753), each with SIGTERM, then SIGKILL after its
// grace period (at most 10 s here).
func (r *runner) stopAll() {
	var order []string
	for _, c := range r.pod.Spec.Containers {
		order = append(order, c.Name)
	}
	for i := len(r.pod.Spec.InitContainers) - 1; i >= 0; i-- {
		order = append(order, r.pod.Spec.InitContainers[i].Name)
	}
	for _, name := range order {
		if rc := r.containers[name]; rc != nil {
			rc.stop(10 * time.Second)
		}
	}
}

// imageFlags parses repeated --image values.
type imageFlags map[string]image

func (f *imageFlags) String() string { return fmt.Sprint(map[string]image(*f)) }

func (f *imageFlags) Set(value string) error {
	if *f == nil {
		*f = imageFlags{}
	}
	name, rest, ok := strings.Cut(value, "=")
	if !ok {
		return fmt.Errorf("--image %q: want NAME=entrypoint=PATH,binary=HOSTPATH[,user=UID:GID]", value)
	}
	var img image
	for _, field := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(field, "=")
		switch k {
		case "entrypoint":
			img.entrypoint = v
		case "binary":
			img.binary = v
		case "user":
			u, g, _ := strings.Cut(v, ":")
			uid, err1 := strconv.ParseInt(u, 10, 64)
			gid, err2 := strconv.ParseInt(g, 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return fmt.Errorf("--image %q: user: %w", value, err)
			}
			img.uid, img.gid = &uid, &gid
		default:
			return fmt.Errorf("--image %q: unknown field %q", value, k)
		}
	}
	if !filepath.IsAbs(img.entrypoint) || img.binary == "" {
		return fmt.Errorf("--image %q: needs an absolute entrypoint and a binary", value)
	}
	(*f)[name] = img
	return nil
}

// writeJSON writes v to path (via a temporary file and a rename).
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
