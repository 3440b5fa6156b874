{{/* Common labels of every object. */}}
{{- define "weft.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "identity"). */}}
{{- define "weft.componentLabels" -}}
{{ include "weft.labels" .root }}
{{ include "weft.selectorLabels" . }}
{{- end -}}

{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: weft-{{ .component }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image reference: (dict "root" $ "image" .Values.x.image). */}}
{{- define "weft.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository (toString $tag) -}}
{{- end -}}

{{/* Effective replicas of a component: (dict "root" $ "c" .Values.identity). */}}
{{- define "weft.replicas" -}}
{{- if .root.Values.highAvailability -}}
{{- max 3 (int .c.replicas) -}}
{{- else -}}
{{- int .c.replicas -}}
{{- end -}}
{{- end -}}

{{- define "weft.failurePolicy" -}}
{{- $p := .Values.webhook.failurePolicy | default (ternary "Fail" "Ignore" .Values.highAvailability) -}}
{{- if not (has $p (list "Ignore" "Fail")) -}}
{{- fail (printf "webhook.failurePolicy must be Ignore or Fail, not %q" $p) -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{/* proxy.defaultInboundPolicy, checked: weft-injector and weft-destination would refuse to start on a typo. */}}
{{- define "weft.defaultInboundPolicy" -}}
{{- $p := .Values.proxy.defaultInboundPolicy | default "all-unauthenticated" -}}
{{- $all := list "all-unauthenticated" "all-authenticated" "cluster-unauthenticated" "cluster-authenticated" "deny" "audit" -}}
{{- if not (has $p $all) -}}
{{- fail (printf "proxy.defaultInboundPolicy must be one of %s, not %q" (join ", " $all) $p) -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{/* clusterNetworks as one comma-separated flag value (a YAML list is accepted too). */}}
{{- define "weft.clusterNetworks" -}}
{{- $n := .Values.clusterNetworks -}}
{{- if kindIs "slice" $n -}}{{- $n = join "," $n -}}{{- end -}}
{{- $n = nospace (toString $n) -}}
{{- if not $n -}}
{{- fail "clusterNetworks must name at least one CIDR (default: 10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8)" -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{/* Trust anchors, checked. */}}
{{- define "weft.trustAnchors" -}}
{{- $pem := required "identityTrustAnchorsPEM is required: run `weft identity create-ca --out ./ca` and pass --set-file identityTrustAnchorsPEM=ca/trust-anchors.pem (see charts/weft/README.md)" .Values.identityTrustAnchorsPEM -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" $pem) -}}
{{- fail "identityTrustAnchorsPEM holds no PEM certificate (expected the trust-anchors.pem written by `weft identity create-ca`)" -}}
{{- end -}}
{{- $pem -}}
{{- end -}}

{{/*
Pod-level settings shared by the three Deployments:
(dict "root" $ "component" "identity").
*/}}
{{- define "weft.podCommon" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
securityContext:
{{ toYaml $root.Values.podSecurityContext | indent 2 }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
{{ toYaml . }}
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if $root.Values.highAvailability }}
affinity:
  podAntiAffinity:
    # One replica per node (Linkerd's HA rule): losing a node loses one replica.
    requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
{{ include "weft.selectorLabels" . | indent 10 }}
    # And spread over zones where the cluster has them.
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: topology.kubernetes.io/zone
        labelSelector:
          matchLabels:
{{ include "weft.selectorLabels" . | indent 12 }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget when a component runs more than one replica. */}}
{{- define "weft.pdb" -}}
{{- if gt (int (include "weft.replicas" (dict "root" .root "c" .c))) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: weft-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
{{ include "weft.componentLabels" . | indent 4 }}
spec:
  minAvailable: {{ .root.Values.podDisruptionBudget.minAvailable }}
  selector:
    matchLabels:
{{ include "weft.selectorLabels" . | indent 6 }}
{{- end }}
{{- end -}}

{{/*
Relabelings shared by the PodMonitors: namespace and pod, and the owning
workload as Linkerd names it (a ReplicaSet's pod counts for its Deployment:
the pod-template-hash suffix is cut off the ReplicaSet's name).
*/}}
{{- define "weft.podMonitorRelabelings" -}}
- sourceLabels: [__meta_kubernetes_namespace]
  targetLabel: namespace
- sourceLabels: [__meta_kubernetes_pod_name]
  targetLabel: pod
- sourceLabels: [__meta_kubernetes_pod_controller_kind, __meta_kubernetes_pod_controller_name]
  regex: ReplicaSet;(.+)-[a-z0-9]+
  targetLabel: deployment
- sourceLabels: [__meta_kubernetes_pod_controller_kind, __meta_kubernetes_pod_controller_name]
  regex: StatefulSet;(.+)
  targetLabel: statefulset
- sourceLabels: [__meta_kubernetes_pod_controller_kind, __meta_kubernetes_pod_controller_name]
  regex: DaemonSet;(.+)
  targetLabel: daemonset
- sourceLabels: [__meta_kubernetes_pod_controller_kind, __meta_kubernetes_pod_controller_name]
  regex: Job;(.+)
  targetLabel: job_name
{{- end -}}
