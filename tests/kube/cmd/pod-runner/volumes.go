package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/volume"
	"k8s.io/kubernetes/pkg/volume/configmap"
	"k8s.io/kubernetes/pkg/volume/downwardapi"
	"k8s.io/kubernetes/pkg/volume/secret"
	volumeutil "k8s.io/kubernetes/pkg/volume/util"
)

// volumeDir is where volume `name` lives on this machine.
func (r *runner) volumeDir(name string) string {
	return filepath.Join(r.state, "volumes", name)
}

// setUpVolumes sets up every volume of the pod, as the kubelet's volume
// manager does at each pod sync: an emptyDir once; the others again each
// time (the atomic writer writes only when the payload changed; a token is
// asked for again only when it requires a refresh).
func (r *runner) setUpVolumes(ctx context.Context) error {
	for i := range r.pod.Spec.Volumes {
		v := &r.pod.Spec.Volumes[i]
		if len(r.only) != 0 && !r.mounted(v.Name) {
			continue
		}
		if err := r.setUpVolume(ctx, v); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	return nil
}

func (r *runner) setUpVolume(ctx context.Context, v *v1.Volume) error {
	dir := r.volumeDir(v.Name)
	switch {
	case v.EmptyDir != nil:
		if _, err := os.Stat(dir); err == nil {
			return nil
		}
		return r.setUpEmptyDir(dir)
	case v.ConfigMap != nil:
		s := v.ConfigMap
		cm, err := r.configMap(ctx, s.Name, s.Optional)
		if err != nil {
			return err
		}
		payload, err := configmap.MakePayload(s.Items, cm, s.DefaultMode, nil, s.Optional != nil && *s.Optional)
		if err != nil {
			return err
		}
		return r.write(v.Name, payload)
	case v.Secret != nil:
		s := v.Secret
		sec, err := r.secret(ctx, s.SecretName, s.Optional)
		if err != nil {
			return err
		}
		payload, err := secret.MakePayload(s.Items, sec, s.DefaultMode, nil, s.Optional != nil && *s.Optional)
		if err != nil {
			return err
		}
		return r.write(v.Name, payload)
	case v.DownwardAPI != nil:
		payload, err := downwardapi.CollectData(v.DownwardAPI.Items, r.pod, nil, v.DownwardAPI.DefaultMode, nil)
		if err != nil {
			return err
		}
		return r.write(v.Name, payload)
	case v.Projected != nil:
		payload, err := r.projected(ctx, v.Projected)
		if err != nil {
			return err
		}
		return r.write(v.Name, payload)
	}
	return fmt.Errorf("the runner does not materialise this kind of volume")
}

// setUpEmptyDir is pkg/volume/emptydir/empty_dir.go (setupDir, then
// SetUpAt's ownership change): a directory of mode 0777, given to the
// pod's fsGroup (setgid, group rw) when it has one. Medium Memory (tmpfs)
// and sizeLimit are not applied.
func (r *runner) setUpEmptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	return r.ownership(dir, false).ChangePermissions()
}

// projected collects a projected volume's files as the kubelet's
// pkg/volume/projected/projected.go (collectData) does: each source's
// payload from the kubelet's own MakePayload/CollectData, and a service
// account token with the volume's defaultMode, or 0600 when it has an
// owner (FsUserFrom: the one uid all containers run as) or the pod an
// fsGroup (SetVolumeOwnership then adds the group's read bit).
func (r *runner) projected(ctx context.Context, s *v1.ProjectedVolumeSource) (map[string]volumeutil.FileProjection, error) {
	payload := map[string]volumeutil.FileProjection{}
	merge := func(p map[string]volumeutil.FileProjection) {
		for k, v := range p {
			payload[k] = v
		}
	}
	for _, src := range s.Sources {
		switch {
		case src.ConfigMap != nil:
			cm, err := r.configMap(ctx, src.ConfigMap.Name, src.ConfigMap.Optional)
			if err != nil {
				return nil, err
			}
			p, err := configmap.MakePayload(src.ConfigMap.Items, cm, s.DefaultMode, nil, src.ConfigMap.Optional != nil && *src.ConfigMap.Optional)
			if err != nil {
				return nil, err
			}
			merge(p)
		case src.Secret != nil:
			sec, err := r.secret(ctx, src.Secret.Name, src.Secret.Optional)
			if err != nil {
				return nil, err
			}
			p, err := secret.MakePayload(src.Secret.Items, sec, s.DefaultMode, nil, src.Secret.Optional != nil && *src.Secret.Optional)
			if err != nil {
				return nil, err
			}
			merge(p)
		case src.DownwardAPI != nil:
			p, err := downwardapi.CollectData(src.DownwardAPI.Items, r.pod, nil, s.DefaultMode, nil)
			if err != nil {
				return nil, err
			}
			merge(p)
		case src.ServiceAccountToken != nil:
			tp := src.ServiceAccountToken
			fsUser := volumeutil.FsUserFrom(r.pod)
			mode := *s.DefaultMode
			if fsUser != nil || r.fsGroup() != nil {
				mode = 0o600
			}
			token, err := r.tokens.token(ctx, tp)
			if err != nil {
				return nil, err
			}
			payload[tp.Path] = volumeutil.FileProjection{Data: []byte(token), Mode: mode, FsUser: fsUser}
		default:
			return nil, fmt.Errorf("the runner does not materialise this kind of projected source")
		}
	}
	return payload, nil
}

// write writes a payload into volume `name` with the kubelet's atomic
// writer (pkg/volume/util/atomic_writer.go: a timestamped directory, the
// `..data` symlink swapped to it, user-visible symlinks through `..data`,
// files chowned to their FsUser), and its ownership change for the pod's
// fsGroup (these volumes are read-only: group read added).
func (r *runner) write(name string, payload map[string]volumeutil.FileProjection) error {
	dir := r.volumeDir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	w, err := volumeutil.NewAtomicWriter(dir, fmt.Sprintf("pod %s/%s volume %s", r.pod.Namespace, r.pod.Name, name))
	if err != nil {
		return err
	}
	return w.Write(payload, func(string) error { return r.ownership(dir, true).ChangePermissions() })
}

func (r *runner) fsGroup() *int64 {
	if sc := r.pod.Spec.SecurityContext; sc != nil {
		return sc.FSGroup
	}
	return nil
}

// ownership is the kubelet's SetVolumeOwnership (pkg/volume/volume_linux.go)
// for a volume at dir: nothing without an fsGroup; else every file's group
// becomes it, with group read (and write, unless read-only) added.
func (r *runner) ownership(dir string, readOnly bool) volume.VolumeOwnershipChanger {
	return volume.NewVolumeOwnership(&mounter{dir: dir, readOnly: readOnly}, dir, r.fsGroup(), nil, nil)
}

// mounter is the little of a volume.Mounter that the ownership change asks.
type mounter struct {
	volume.MetricsNil
	dir      string
	readOnly bool
}

func (m mounter) GetPath() string                          { return m.dir }
func (m mounter) SetUp(volume.MounterArgs) error           { return nil }
func (m mounter) SetUpAt(string, volume.MounterArgs) error { return nil }
func (m mounter) GetAttributes() volume.Attributes {
	return volume.Attributes{ReadOnly: m.readOnly, Managed: true}
}

func (r *runner) configMap(ctx context.Context, name string, optional *bool) (*v1.ConfigMap, error) {
	cm, err := r.client.CoreV1().ConfigMaps(r.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: r.pod.Namespace, Name: name}}, nil
	}
	return cm, err
}

func (r *runner) secret(ctx context.Context, name string, optional *bool) (*v1.Secret, error) {
	s, err := r.client.CoreV1().Secrets(r.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return &v1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.pod.Namespace, Name: name}}, nil
	}
	return s, err
}
