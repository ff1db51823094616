{{- define "keyrotor.name" -}}keyrotor{{- end -}}

{{- define "keyrotor.labels" -}}
app.kubernetes.io/name: keyrotor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyrotor
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keyrotor.selectorLabels" -}}
app.kubernetes.io/name: keyrotor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- /* A shard's Deployment name (keyrotor, or keyrotor-<shard>) and its pods' extra label. */ -}}
{{- define "keyrotor.shardName" -}}
{{- if .name }}keyrotor-{{ .name }}{{ else }}keyrotor{{ end }}
{{- end -}}

{{- define "keyrotor.shardLabel" -}}
{{- with .name }}keyrotor.io/shard: {{ . | quote }}{{ end }}
{{- end -}}
