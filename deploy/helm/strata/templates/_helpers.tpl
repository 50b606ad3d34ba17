{{/* Labels every object carries. */}}
{{- define "strata.labels" -}}
app.kubernetes.io/part-of: strata
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "strata.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* Pod Security "restricted": non-root, seccomp RuntimeDefault. */}}
{{- define "strata.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .runAsUser }}
  runAsGroup: {{ .runAsUser }}
  fsGroup: {{ .runAsUser }}
  seccompProfile: {type: RuntimeDefault}
{{- end }}

{{/* Container half of "restricted": no escalation, no capabilities, read-only root. */}}
{{- define "strata.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end }}

{{/* The online store's URL: the in-cluster StatefulSet or the external endpoint. */}}
{{- define "strata.valkeyUrl" -}}
{{- if .Values.valkey.enabled -}}
redis://valkey-0.valkey.{{ .Release.Namespace }}.svc:6379/0
{{- else -}}
{{- required "externalValkey.url is required when valkey.enabled=false" .Values.externalValkey.url -}}
{{- end -}}
{{- end }}

{{/* Environment of every strata process that talks to the online store (the password comes
from the Secret, never inside the URL). */}}
{{- define "strata.valkeyEnv" -}}
- {name: STRATA_ONLINE__TYPE, value: valkey}
- {name: STRATA_ONLINE__URL, value: {{ include "strata.valkeyUrl" . | quote }}}
- name: STRATA_ONLINE__PASSWORD
  valueFrom:
    secretKeyRef: {name: strata-valkey, key: password}
{{- end }}

{{/* The pool a pod lands on: a Karpenter NodePool or a managed node group, by label. */}}
{{- define "strata.pool" -}}
nodeSelector: {strata.io/pool: {{ . }}}
{{- end }}

{{- define "strata.dataVolume" -}}
- name: data
  persistentVolumeClaim: {claimName: {{ .Values.storage.existingClaim | default "strata-data" }}}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "strata.dataMounts" -}}
- {name: data, mountPath: {{ .Values.storage.mountPath }}}
- {name: tmp, mountPath: /tmp}
{{- end }}

{{/* The cluster-mode probes: the port opens once start-up (model loading, or waiting for a
first version) is done, so /healthz is the startup and liveness probe; /readyz answers 503
until a version is loaded (then 200; a store outage is `degraded` in the body, not unready). */}}
{{- define "strata.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 90
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
{{- end }}

{{- define "strata.pdb" -}}
# Voluntary disruptions (node drains, Karpenter consolidation) keep one replica serving.
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels: {app.kubernetes.io/name: {{ .name }}}
spec:
  minAvailable: 1
  selector:
    matchLabels: {app.kubernetes.io/name: {{ .name }}}
{{- end }}

{{/* An HPA on a per-pod p95 latency from prometheus-adapter (seconds, as a quantity) with CPU
as a floor. */}}
{{- define "strata.hpa" -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .name }}
  labels: {app.kubernetes.io/name: {{ .name }}}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  minReplicas: {{ .cfg.minReplicas }}
  maxReplicas: {{ .cfg.maxReplicas }}
  metrics:
    - type: Pods
      pods:
        metric:
          name: {{ .metric }}
        target:
          type: AverageValue
          # seconds as a Kubernetes quantity: "50m" = 0.05 s
          averageValue: {{ .cfg.p95LatencyTarget | quote }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .cfg.cpuUtilization }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
{{- end }}
