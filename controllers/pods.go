package controllers

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// failingWaits are the container waiting reasons that waiting does not cure on its own: the
// kubelet keeps retrying, and the pod never becomes ready until a person (or a new spec)
// changes something. ContainerCreating and PodInitializing are not here: they pass.
var failingWaits = []string{"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
	"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}

// podTrouble is the first account, by pod name, of a not-ready pod of component that will not
// become ready by waiting: unschedulable, or a container (init containers included) in one of
// failingWaits, with the last termination's reason (OOMKilled, Error and its exit code) when
// there is one. "" when every not-ready pod of component is merely starting.
//
// This is what a StatefulSet never says: it has no progress deadline, so a database whose
// pods crash-loop would otherwise read "primary not ready" for ever.
func podTrouble(pods []corev1.Pod, component string) string {
	var found []string
	for _, p := range pods {
		if p.Labels[rpv1.LabelComponent] != component || p.DeletionTimestamp != nil || podReady(p) {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				found = append(found, fmt.Sprintf("pod %s is unschedulable: %s", p.Name, c.Message))
			}
		}
		statuses := append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...)
		for _, cs := range statuses {
			w := cs.State.Waiting
			if w == nil || !slices.Contains(failingWaits, w.Reason) {
				continue
			}
			msg := fmt.Sprintf("pod %s container %s: %s", p.Name, cs.Name, w.Reason)
			if w.Message != "" {
				msg += ": " + w.Message
			}
			if t := cs.LastTerminationState.Terminated; t != nil {
				msg += fmt.Sprintf(" (last exit: %s, code %d, %d restarts)", t.Reason, t.ExitCode, cs.RestartCount)
			}
			found = append(found, msg)
		}
	}
	slices.Sort(found)
	if len(found) == 0 {
		return ""
	}
	if len(found) > 1 {
		return fmt.Sprintf("%s (and %d more)", found[0], len(found)-1)
	}
	return found[0]
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// trimMessage keeps a condition message readable when a container's message is long.
func trimMessage(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return strings.TrimSpace(s[:max]) + "…"
}
